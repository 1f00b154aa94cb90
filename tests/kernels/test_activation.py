"""silu_and_mul: closeness to reference.silu_and_mul_ref (forward and gradient) per
dtype, and bitwise invariance (row alone vs in any batch, backward run to run).
Invariance tests use torch.equal only and are never retried."""
import pytest
import torch

from exact_kernels.activation import silu_and_mul
from exact_kernels.reference import silu_and_mul_ref

TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (2e-3, 2e-3)}
SHAPES = [(5, 246), (3, 7, 64), (4, 2 * 1536), (2, 2)]


@pytest.mark.parametrize("dt", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_close(device, gen, dt, shape):
    x = (3 * torch.randn(shape, generator=gen)).to(dt).to(device)
    y = silu_and_mul(x)
    assert y.dtype == dt and y.shape == (*shape[:-1], shape[-1] // 2)
    rtol, atol = TOL[dt]
    torch.testing.assert_close(y.float(), silu_and_mul_ref(x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dt", list(TOL))
@pytest.mark.parametrize("shape", [(5, 246), (3, 7, 64)])
def test_backward_close(device, gen, dt, shape):
    x = (3 * torch.randn(shape, generator=gen)).to(dt).to(device)
    g = torch.randn((*shape[:-1], shape[-1] // 2), generator=gen).to(device)
    x1 = x.clone().requires_grad_()
    silu_and_mul(x1).backward(g.to(dt))
    x2 = x.float().requires_grad_()
    silu_and_mul_ref(x2).backward(g)
    assert x1.grad.dtype == dt
    rtol, atol = (1e-5, 1e-5) if dt == torch.float32 else (3e-2, 3e-2)
    torch.testing.assert_close(x1.grad.float(), x2.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dt,I", [(torch.bfloat16, 1536), (torch.float32, 123)])
def test_rows_invariant_to_batch(device, gen, dt, I):
    R = 300
    x = (3 * torch.randn((R, 2 * I), generator=gen)).to(dt).to(device)
    alone = [silu_and_mul(x[i:i + 1].clone())[0] for i in range(R)]
    for n in list(range(1, 65)) + [97, 128, 255, 300]:
        idx = torch.randperm(R, generator=gen)[:n]
        out = silu_and_mul(x[idx.to(device)])
        for k, i in enumerate(idx.tolist()):
            assert torch.equal(out[k], alone[i]), (n, k, i)


def test_backward_invariant_and_deterministic(device, gen):
    R, I = 64, 1536
    x = torch.randn((R, 2 * I), generator=gen).to(torch.bfloat16).to(device)
    g = torch.randn((R, I), generator=gen).to(torch.bfloat16).to(device)

    def grad(xs, gs):
        x1 = xs.clone().requires_grad_()
        silu_and_mul(x1).backward(gs)
        return x1.grad

    full = grad(x, g)
    assert torch.equal(grad(x, g), full)
    for n in (1, 3, 17, 64):
        assert torch.equal(grad(x[:n], g[:n]), full[:n]), n


@pytest.mark.parametrize("case", ["odd", "dtype", "scalar"])
def test_bad_input(device, case):
    x = {"odd": torch.randn(4, 7), "dtype": torch.ones(4, 8, dtype=torch.int64), "scalar": torch.tensor(1.0)}[case]
    with pytest.raises(ValueError, match="silu_and_mul"):
        silu_and_mul(x.to(device))
