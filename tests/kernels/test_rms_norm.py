"""rms_norm: closeness to reference.rms_norm_ref (forward, d x, d weight) per dtype,
and bitwise invariance (row alone vs in any batch, CPU thread count, backward run to
run). Invariance tests use torch.equal only and are never retried."""
import pytest
import torch

from exact_kernels.reference import rms_norm_ref
from exact_kernels.rms_norm import rms_norm

EPS = 1e-6
# (x dtype, weight dtype) -> (rtol, atol) against the fp32 reference; bf16/fp16 outputs
# are rounded once (and the normalised value once more, as HF does).
TOL = {
    (torch.float32, torch.float32): (1e-5, 1e-5),
    (torch.bfloat16, torch.bfloat16): (1.6e-2, 1e-2),
    (torch.float16, torch.float16): (2e-3, 2e-3),
    (torch.bfloat16, torch.float32): (8e-3, 1e-2),
    (torch.float32, torch.bfloat16): (1e-5, 1e-5),
}
SHAPES = [(5, 123), (3, 7, 64), (4, 4096), (1, 1)]


def _inputs(shape, dt, wdt, device, gen):
    x = torch.randn(shape, generator=gen).to(dt).to(device)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=gen)).to(wdt).to(device)
    return x, w


@pytest.mark.parametrize("dt,wdt", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_close(device, gen, shape, dt, wdt):
    x, w = _inputs(shape, dt, wdt, device, gen)
    y = rms_norm(x, w, EPS)
    assert y.dtype == torch.promote_types(dt, wdt) and y.shape == x.shape
    rtol, atol = TOL[(dt, wdt)]
    torch.testing.assert_close(y.float(), rms_norm_ref(x, w, EPS), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dt,wdt", list(TOL))
@pytest.mark.parametrize("shape", [(5, 123), (70, 256)])
def test_backward_close(device, gen, shape, dt, wdt):
    x, w = _inputs(shape, dt, wdt, device, gen)
    g = torch.randn(shape, generator=gen).to(device)
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    rms_norm(x1, w1, EPS).backward(g.to(torch.promote_types(dt, wdt)))
    x2, w2 = x.float().requires_grad_(), w.float().requires_grad_()
    rms_norm_ref(x2, w2, EPS).backward(g)
    assert x1.grad.dtype == dt and w1.grad.dtype == wdt
    rtol, atol = (1e-4, 1e-4) if (dt, wdt) == (torch.float32, torch.float32) else (3e-2, 3e-2)
    torch.testing.assert_close(x1.grad.float(), x2.grad, rtol=rtol, atol=atol)
    # d weight sums shape[0] rows: absolute error grows with the row count.
    torch.testing.assert_close(w1.grad.float(), w2.grad, rtol=rtol, atol=atol * shape[0] ** 0.5)


def _alone(x, w, device):
    return [rms_norm(x[i:i + 1].clone(), w, EPS)[0] for i in range(x.shape[0])]


@pytest.mark.parametrize("dt,H", [(torch.bfloat16, 4096), (torch.float32, 123), (torch.float16, 128)])
def test_rows_invariant_to_batch(device, gen, dt, H):
    R = 300
    x, w = _inputs((R, H), dt, dt, device, gen)
    alone = _alone(x, w, device)
    sizes = list(range(1, 65)) + [97, 128, 255, 300]
    for n in sizes:
        idx = torch.randperm(R, generator=gen)[:n]
        out = rms_norm(x[idx.to(device)], w, EPS)
        for k, i in enumerate(idx.tolist()):
            assert torch.equal(out[k], alone[i]), (n, k, i)


def test_rows_invariant_every_position_and_view(device, gen):
    H, B = 123, 64  # H * 2 bytes is not a multiple of 16: views of single rows are misaligned
    x, w = _inputs((B, H), torch.bfloat16, torch.bfloat16, device, gen)
    target = x[0].clone()
    ref = rms_norm(target[None], w, EPS)[0]
    for p in range(B):
        batch = x.clone()
        batch[p] = target
        assert torch.equal(rms_norm(batch, w, EPS)[p], ref), p
        assert torch.equal(rms_norm(batch[p:p + 1], w, EPS)[0], ref), p  # a (misaligned) view


def test_rows_invariant_to_cpu_threads(gen):
    x, w = _inputs((33, 4096), torch.bfloat16, torch.bfloat16, "cpu", gen)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rms_norm(x, w, EPS)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(rms_norm(x, w, EPS), one)


def test_backward_dx_invariant_and_deterministic(device, gen):
    R, H = 100, 4096
    x, w = _inputs((R, H), torch.bfloat16, torch.bfloat16, device, gen)
    g = torch.randn((R, H), generator=gen).to(torch.bfloat16).to(device)

    def grads(xs, gs):
        x1, w1 = xs.clone().requires_grad_(), w.clone().requires_grad_()
        rms_norm(x1, w1, EPS).backward(gs)
        return x1.grad, w1.grad

    dx, dw = grads(x, g)
    for _ in range(3):
        dx2, dw2 = grads(x, g)
        assert torch.equal(dx, dx2) and torch.equal(dw, dw2)
    for n in (1, 2, 7, 33, 64):
        dxn, _ = grads(x[:n], g[:n])
        assert torch.equal(dxn, dx[:n]), n


@pytest.mark.parametrize("case", ["dtype", "weight_len", "weight_dtype", "eps", "empty_h"])
def test_bad_input(device, case):
    x = torch.randn(4, 8, device=device)
    w = torch.ones(8, device=device)
    args = {"dtype": (x.long(), w, EPS), "weight_len": (x, torch.ones(7, device=device), EPS),
            "weight_dtype": (x, w.to(torch.int32), EPS), "eps": (x, w, -1.0),
            "empty_h": (x[:, :0], w[:0], EPS)}[case]
    with pytest.raises(ValueError, match="rms_norm"):
        rms_norm(*args)


@pytest.mark.parametrize("R,H", [(131072, 128), (8192, 1024), (2049, 64)])
def test_backward_dw_large_batches(device, gen, R, H):
    """The weight gradient over many rows (the q/k norms of an 8192-token micro-batch
    with 16 heads: 131072 rows of 128; CUDA adds R / 32 partials by a fixed tree):
    close to a float64 sum, and the same bits run to run."""
    x, w = _inputs((R, H), torch.bfloat16, torch.bfloat16, device, gen)
    g = torch.randn((R, H), generator=gen).to(torch.bfloat16).to(device)

    def dw():
        w1 = w.clone().requires_grad_()
        rms_norm(x, w1, EPS).backward(g)
        return w1.grad

    first = dw()
    assert torch.equal(first, dw())
    xd = x.double()
    n = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + EPS)).to(torch.bfloat16).double()
    ref = (g.double() * n).sum(0)
    # bf16 output: one rounding (2^-9 relative) of a sum whose fp32 error is far below it;
    # atol for columns whose sum nearly cancels (|terms| ~ 1, sqrt(R) of them)
    torch.testing.assert_close(first.double(), ref, rtol=8e-3, atol=2e-3 * R ** 0.5)


_INTERPRETED_SUM = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from exact_kernels.rms_norm import SUM_C, _sum_partials
g = torch.Generator().manual_seed(0)
for P in (1, 5, SUM_C, SUM_C + 1, 3 * SUM_C + 7, SUM_C * SUM_C + 3):
    for H in (1, 100, 128):
        part = torch.randn(P, H, generator=g)
        out = torch.empty(H, dtype=torch.float32)
        _sum_partials(part, out)
        again = torch.empty(H, dtype=torch.float32)
        _sum_partials(part.clone(), again)
        assert torch.equal(out, again), (P, H)
        torch.testing.assert_close(out.double(), part.double().sum(0), rtol=1e-5, atol=1e-5 * P ** 0.5)
        if P <= SUM_C:  # one level: the partials added one after another, in order
            seq = torch.zeros(H, dtype=torch.float32)
            for p in range(P):
                seq = seq + part[p]
            assert torch.equal(out, seq), (P, H)
print("tree ok")
"""


def test_dw_partials_tree_interpreted(tmp_path):
    """CPU, the Triton interpreter: the fixed tree that adds dw's partials on CUDA
    (_sum_partials): close to a float64 sum, the same bits twice, and, up to SUM_C
    partials, exactly the in-order fp32 sum."""
    import subprocess
    import sys

    script = tmp_path / "interpreted.py"
    script.write_text(_INTERPRETED_SUM)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "tree ok" in run.stdout, run.stdout + run.stderr
