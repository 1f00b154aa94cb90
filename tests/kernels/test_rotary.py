"""rotary_table / apply_rotary: closeness to reference.rotary_table_ref and
apply_rotary_ref (forward and gradient) per dtype, and bitwise invariance (a
position's table row does not depend on max_positions; a token alone vs in any batch;
backward run to run). Invariance tests use torch.equal only and are never retried."""
import pytest
import torch

from exact_kernels.reference import apply_rotary_ref, rotary_table_ref
from exact_kernels.rotary import apply_rotary, rotary_table

THETA = 1e6
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (2e-3, 2e-3)}


@pytest.mark.parametrize("P,D", [(4096, 128), (123, 64), (7, 2)])
def test_table_close(device, P, D):
    cos, sin = rotary_table(P, D, THETA, device)
    cr, sr = rotary_table_ref(P, D, THETA)
    assert cos.dtype == torch.float32 and cos.shape == (P, D // 2) and cos.device.type == device
    # Same fp32 angle; cos/sin may differ from torch's CPU vector path by an ulp.
    torch.testing.assert_close(cos.cpu(), cr, rtol=0, atol=5e-7)
    torch.testing.assert_close(sin.cpu(), sr, rtol=0, atol=5e-7)


def test_table_invariant_to_max_positions(device):
    cos, sin = rotary_table(40960, 128, THETA, device)
    for P in (1, 2, 17, 1000, 4097, 32768):
        c, s = rotary_table(P, 128, THETA, device)
        assert torch.equal(c, cos[:P]) and torch.equal(s, sin[:P]), P


def test_table_invariant_to_default_device(device):
    """The table does not depend on the ambient default device (vLLM builds models inside
    `with torch.device(...)`; the trainer does not): same bits built inside a `meta`
    context, and on CUDA inside a `cuda` context."""
    cos, sin = rotary_table(4096, 128, THETA, device)
    for ctx in ("meta", "cuda") if device == "cuda" else ("meta",):
        with torch.device(ctx):
            c, s = rotary_table(4096, 128, THETA, device)
        assert torch.equal(c, cos) and torch.equal(s, sin), ctx


def test_table_invariant_to_cpu_threads():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rotary_table(5000, 128, THETA)
    finally:
        torch.set_num_threads(n)
    two = rotary_table(5000, 128, THETA)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("dt", list(TOL))
@pytest.mark.parametrize("T,heads,D", [(5, 3, 64), (7, 32, 128), (1, 1, 2)])
def test_apply_close(device, gen, dt, T, heads, D):
    cos, sin = rotary_table(300, D, THETA, device)
    x = torch.randn((T, heads, D), generator=gen).to(dt).to(device)
    pos = torch.randint(0, 300, (T,), generator=gen).to(device)
    y = apply_rotary(x, pos, cos, sin)
    assert y.dtype == dt and y.shape == x.shape
    rtol, atol = TOL[dt]
    torch.testing.assert_close(y.float(), apply_rotary_ref(x, pos, cos, sin), rtol=rtol, atol=atol)
    # backward: rotation by -angle
    g = torch.randn((T, heads, D), generator=gen).to(device)
    x1 = x.clone().requires_grad_()
    apply_rotary(x1, pos.int(), cos, sin).backward(g.to(dt))
    x2 = x.float().requires_grad_()
    apply_rotary_ref(x2, pos, cos, sin).backward(g)
    assert x1.grad.dtype == dt
    torch.testing.assert_close(x1.grad.float(), x2.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("heads", [32, 8])  # q and k of Qwen3-8B
def test_tokens_invariant_to_batch(device, gen, heads):
    T, D = 300, 128
    cos, sin = rotary_table(4096, D, THETA, device)
    x = torch.randn((T, heads, D), generator=gen).to(torch.bfloat16).to(device)
    pos = torch.randint(0, 4096, (T,), generator=gen).to(device)
    alone = [apply_rotary(x[i:i + 1].clone(), pos[i:i + 1].clone(), cos, sin)[0] for i in range(T)]
    for n in list(range(1, 65)) + [97, 128, 255, 300]:
        idx = torch.randperm(T, generator=gen)[:n].to(device)
        out = apply_rotary(x[idx], pos[idx], cos, sin)
        for k, i in enumerate(idx.tolist()):
            assert torch.equal(out[k], alone[i]), (n, k, i)


def test_backward_invariant_and_deterministic(device, gen):
    T, heads, D = 64, 8, 128
    cos, sin = rotary_table(1024, D, THETA, device)
    x = torch.randn((T, heads, D), generator=gen).to(torch.bfloat16).to(device)
    g = torch.randn((T, heads, D), generator=gen).to(torch.bfloat16).to(device)
    pos = torch.randint(0, 1024, (T,), generator=gen).to(device)

    def grad(n):
        x1 = x[:n].clone().requires_grad_()
        apply_rotary(x1, pos[:n], cos, sin).backward(g[:n])
        return x1.grad

    full = grad(T)
    assert torch.equal(grad(T), full)
    for n in (1, 5, 33):
        assert torch.equal(grad(n), full[:n]), n


@pytest.mark.parametrize("case", ["odd_head_dim", "x_dtype", "pos_dtype", "pos_len", "table_shape", "x_2d"])
def test_apply_bad_input(device, case):
    cos, sin = rotary_table(16, 8, THETA, device)
    x = torch.randn(3, 2, 8, device=device)
    pos = torch.arange(3, device=device)
    args = {"odd_head_dim": (torch.randn(3, 2, 7, device=device), pos, cos, sin),
            "x_dtype": (x.long(), pos, cos, sin), "pos_dtype": (x, pos.float(), cos, sin),
            "pos_len": (x, pos[:2], cos, sin), "table_shape": (x, pos, cos[:, :3], sin[:, :3]),
            "x_2d": (x[0], pos, cos, sin)}[case]
    with pytest.raises(ValueError, match="apply_rotary"):
        apply_rotary(*args)


def test_positions_beyond_table_cpu():
    cos, sin = rotary_table(16, 8, THETA)
    x = torch.randn(3, 2, 8)
    for bad in ([0, 1, 16], [-1, 0, 1]):
        with pytest.raises(ValueError, match=r"apply_rotary.*\[0, 16\)"):
            apply_rotary(x, torch.tensor(bad), cos, sin)


@pytest.mark.gpu
def test_positions_beyond_table_cuda_give_nan():
    cos, sin = rotary_table(16, 8, THETA, "cuda")
    x = torch.randn(3, 2, 8, device="cuda")
    y = apply_rotary(x, torch.tensor([0, 16, 1], device="cuda"), cos, sin)
    assert y[1].isnan().all() and not y[0].isnan().any() and not y[2].isnan().any()


@pytest.mark.parametrize("args", [(0, 8, THETA), (16, 7, THETA), (16, 8, 0.0)])
def test_table_bad_input(args):
    with pytest.raises(ValueError, match="rotary_table"):
        rotary_table(*args)
