"""Tests for exact_kernels.matmul (mm, addmm, bmm, linear), CPU and CUDA.

Two kinds, never mixed:
* `*_close`: closeness to the fp32 references (kernels/reference.py) per dtype, with
  the tolerances stated in `TOL`, forward and every gradient, ordinary and odd shapes.
* `*_invariant`: `torch.equal`, no tolerance, no retry. Row i alone == row i inside
  batches of every size 1..64 and larger ones, at every position, shuffled; bmm batch
  element alone == in the batch; on CUDA every M bucket's launch configuration gives
  the same bits; backward run-to-run determinism.
"""
import pytest
import torch

from exact_kernels import addmm, bmm, linear, mm
from exact_kernels.matmul import (_CONFIGS, MMConfig, _launch_cuda, _pick_config, addmm_forward, bmm_forward,
                                  mm_forward)
from exact_kernels.reference import linear_ref, mm_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Inputs are drawn in the test dtype, so the only errors are fp32 accumulation order
# and one final rounding to the dtype (bf16: 2^-9 relative, fp16: 2^-12).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}
SHAPES = [(5, 123, 123), (1, 1, 1), (64, 256, 96), (33, 300, 70), (17, 1000, 130)]  # (M, K, N)


def _rand(gen, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, generator=gen).to(dtype).to(device)


# ------------------------------------------------------------------ closeness


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_mm_close(device, gen, dtype, M, K, N):
    a, b = _rand(gen, M, K, dtype=dtype, device=device), _rand(gen, K, N, dtype=dtype, device=device)
    out = mm(a, b)
    assert out.dtype == dtype and out.shape == (M, N)
    torch.testing.assert_close(out.float(), mm_ref(a, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mm_strided_close(device, gen, dtype):
    w = _rand(gen, 70, 123, dtype=dtype, device=device)
    a_big = _rand(gen, 9, 250, dtype=dtype, device=device)
    a = a_big[:, 1:247:2]  # neither dim contiguous
    torch.testing.assert_close(mm(a, w.t()).float(), mm_ref(a, w.t()), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias_shape", [(70,), (1, 70), (9, 70), (9, 1), ()])
def test_addmm_close(device, gen, dtype, bias_shape):
    a, b = _rand(gen, 9, 123, dtype=dtype, device=device), _rand(gen, 123, 70, dtype=dtype, device=device)
    bias = _rand(gen, *bias_shape, dtype=dtype, device=device)
    for beta, alpha in [(1, 1), (0.5, 2.0), (0, 1)]:
        ref = alpha * mm_ref(a, b) + beta * bias.float()
        torch.testing.assert_close(addmm(bias, a, b, beta=beta, alpha=alpha).float(), ref, **TOL[dtype])
    nan_bias = torch.full_like(bias, float("nan"))
    assert not addmm(nan_bias, a, b, beta=0).isnan().any()  # aten: beta == 0 ignores bias


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bmm_close(device, gen, dtype):
    a, b = _rand(gen, 3, 5, 123, dtype=dtype, device=device), _rand(gen, 3, 123, 33, dtype=dtype, device=device)
    ref = torch.stack([mm_ref(a[i], b[i]) for i in range(3)])
    torch.testing.assert_close(bmm(a, b).float(), ref, **TOL[dtype])


def _grad_tol(dtype, scale):
    t = TOL[dtype]
    return dict(rtol=t["rtol"], atol=t["atol"] * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,K,N", [((5,), 123, 123), ((2, 7), 64, 40), ((1,), 1, 1), ((3, 11), 257, 65)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_close(device, gen, dtype, lead, K, N, with_bias):
    x = _rand(gen, *lead, K, dtype=dtype, device=device).requires_grad_()
    w = _rand(gen, N, K, dtype=dtype, device=device).requires_grad_()
    bias = _rand(gen, N, dtype=dtype, device=device).requires_grad_() if with_bias else None
    g = _rand(gen, *lead, N, dtype=dtype, device=device)
    y = linear(x, w, bias)
    assert y.dtype == dtype and y.shape == (*lead, N)
    y.backward(g)

    xr, wr = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    br = bias.detach().float().requires_grad_() if with_bias else None
    yr = linear_ref(xr, wr, br)
    yr.backward(g.float())
    torch.testing.assert_close(y.float(), yr, **TOL[dtype])
    rows = x.numel() // K
    torch.testing.assert_close(x.grad.float(), xr.grad, **_grad_tol(dtype, 1))
    # grad_W and grad_bias sum over rows: bf16/fp16 round a larger value.
    torch.testing.assert_close(w.grad.float(), wr.grad, **_grad_tol(dtype, max(1, rows ** 0.5)))
    if with_bias:
        torch.testing.assert_close(bias.grad.float(), br.grad, **_grad_tol(dtype, max(1, rows ** 0.5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mm_bmm_addmm_grads_close(device, gen, dtype):
    a = _rand(gen, 6, 50, dtype=dtype, device=device).requires_grad_()
    b = _rand(gen, 50, 20, dtype=dtype, device=device).requires_grad_()
    bias = _rand(gen, 20, dtype=dtype, device=device).requires_grad_()
    A = _rand(gen, 2, 6, 50, dtype=dtype, device=device).requires_grad_()
    B = _rand(gen, 2, 50, 20, dtype=dtype, device=device).requires_grad_()
    outs = [mm(a, b), addmm(bias, a, b, beta=0.5, alpha=2.0), bmm(A, B)]
    sum(o.float().sum() for o in outs).backward()

    leaves = [t.detach().float().requires_grad_() for t in (a, b, bias, A, B)]
    ar, br, biasr, Ar, Br = leaves
    refs = [ar @ br, 0.5 * biasr + 2.0 * (ar @ br), Ar @ Br]
    sum(r.sum() for r in refs).backward()
    for t, r in zip((a, b, bias, A, B), leaves):
        torch.testing.assert_close(t.grad.float(), r.grad, **_grad_tol(dtype, 3))


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_value_error(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA")
    f32 = dict(device=device)
    a, b = torch.randn(4, 8, **f32), torch.randn(8, 3, **f32)
    cases = [
        (mm, (a.int(), b.int())),                        # wrong dtype
        (mm, (a, b.half())),                             # mismatched dtypes
        (mm, (a, torch.randn(7, 3, **f32))),             # inner dims
        (mm, (a[None], b)),                              # ndim
        (mm, (torch.randn(0, 8, **f32), b)),             # empty
        (mm, (a, b.to("meta"))),                         # devices differ
        (bmm, (a, b)),                                   # bmm wants 3-D
        (bmm, (torch.randn(2, 4, 8, **f32), torch.randn(3, 8, 3, **f32))),
        (mm_forward, (a, b.half())),
        (bmm_forward, (a[None], b[None].half())),
        (linear, (a, torch.randn(3, 7, **f32))),
        (linear, (a, torch.randn(3, 8, **f32), torch.randn(4, **f32))),
        (linear, (a, torch.randn(3, 8, **f32).half())),
    ]
    for fn, args in cases:
        with pytest.raises(ValueError, match=fn.__name__.removesuffix("_forward")):
            fn(*args)
    with pytest.raises(ValueError, match="addmm"):
        addmm_forward(torch.randn(5, **f32), a, b)       # bias does not broadcast
    with pytest.raises(ValueError, match="addmm"):
        addmm_forward(torch.randn(3, **f32).half(), a, b)


# ------------------------------------------------------------------ invariance

BATCH_SIZES = list(range(1, 65)) + [100, 257, 1000]


def _rows_alone(a, b):
    return torch.cat([mm_forward(a[i:i + 1], b) for i in range(a.shape[0])])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K,N,transposed", [(257, 130, False), (96, 33, True)])
def test_mm_rows_invariant(device, gen, dtype, K, N, transposed):
    """Every row of every batch (sizes 1..64, 100, 257, 1000; shuffled, so each row
    sits at many positions) equals the same row computed alone."""
    x = _rand(gen, max(BATCH_SIZES), K, dtype=dtype, device=device)
    b = _rand(gen, N, K, dtype=dtype, device=device).t() if transposed else _rand(gen, K, N, dtype=dtype, device=device)
    alone = _rows_alone(x, b)
    for s in BATCH_SIZES:
        idx = torch.randperm(x.shape[0], generator=gen)[:s].to(device)
        assert torch.equal(mm_forward(x[idx], b), alone[idx]), f"batch size {s}"
    assert torch.equal(mm(x[:1], b), mm(x, b)[:1])


LAYER_SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (24576, 4096), "down": (4096, 12288),
                "lm_head": (151936, 4096)}  # Qwen3-8B (N, K)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,shape", [(torch.bfloat16, s) for s in LAYER_SHAPES] + [(torch.float16, "o")],
                         ids=str)
def test_cuda_layer_shapes_invariant(dtype, shape):
    """Qwen3-8B layer shapes (all five in bf16, one in fp16), weight as W.t(): rows
    alone vs batches of 1..64 rows and larger ones crossing every M bucket of the
    config table (up to 2048)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    gen = torch.Generator().manual_seed(1234)  # not the `gen` fixture: it would run this per device
    N, K = LAYER_SHAPES[shape]
    x = _rand(gen, 2048, K, dtype=dtype, device="cuda")
    w = _rand(gen, N, K, dtype=dtype, device="cuda")
    alone = torch.cat([mm_forward(x[i:i + 1], w.t()) for i in range(64)])
    for s in list(range(1, 65)) + [100, 257, 1000, 2048]:
        assert torch.equal(mm_forward(x[:s], w.t())[:64], alone[:min(s, 64)]), f"batch size {s}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_configs_invariant(dtype):
    """Every M bucket's launch configuration of every (N, K) entry gives the same bits
    on the same input: this is what allows the config to vary with M."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    gen = torch.Generator().manual_seed(1234)  # not the `gen` fixture: it would run this per device
    shapes = [k for k in _CONFIGS if k is not None] + [(130, 257), (1000, 4000), (1024, 4096)]
    # Pointer and TMA kernels, persistent or not, must agree too (TMA is bf16/fp16 only;
    # _launch_cuda falls back to the pointer kernel where TMA cannot be used).
    extra = [MMConfig(16, 16, 32, 4, 2), MMConfig(128, 256, 64, 8, 3, tma=True),
             MMConfig(128, 128, 64, 8, 4, tma=True, persistent=True)] if dtype != torch.float32 else []
    for N, K in shapes:
        buckets = _CONFIGS.get((N, K), _CONFIGS[None])
        cfgs = list({_pick_config(min(max_m, 1 << 20), N, K, dtype) for max_m, _ in buckets}) + extra
        # fp32 runs on CUDA cores (ieee): fewer rows and columns keep it fast. The order
        # of an element's sum depends on K and the config only, so this loses nothing.
        # (296 rows: a multiple of 8, so a column-major a is TMA-aligned, and of no tile size)
        rows, cols = (96, min(N, 1000)) if dtype == torch.float32 else (296, N)
        a = _rand(gen, 1, rows, K, dtype=dtype, device="cuda")
        w = _rand(gen, 1, cols, K, dtype=dtype, device="cuda")
        a_cols = a.transpose(1, 2).contiguous().transpose(1, 2)  # column-major a, as the weight gradient's g.t()
        ref = _launch_cuda(a, w.transpose(1, 2), None, 0.0, 1.0, config=cfgs[0])
        for b in (w.transpose(1, 2), w.transpose(1, 2).contiguous()):
            for aa, layout in ((a, "row-major a"), (a_cols, "column-major a")):
                for c in cfgs:
                    o = _launch_cuda(aa, b, None, 0.0, 1.0, config=c)
                    assert torch.equal(o, ref), f"(N, K) = {(N, K)}, {layout}: {c} differs from {cfgs[0]}"


def test_weight_gradient_takes_the_tma_path():
    """A linear's weight gradient is g.t() @ x, with g.t() column-major: the TMA kernel
    takes it as stored (A_KMAJOR), not the pointer kernel (measured 2-3x slower on the
    H200 at the trainer's shapes). Only strides, alignment and dtype decide."""
    from exact_kernels.matmul import _tma_ok

    for T, n_out, k_in in ((8192, 3072, 1024), (8192, 1024, 3072), (4104, 2048, 1024)):
        g = torch.empty(T, n_out, dtype=torch.bfloat16)
        x = torch.empty(T, k_in, dtype=torch.bfloat16)
        w = torch.empty(n_out, k_in, dtype=torch.bfloat16)
        out = torch.empty(n_out, k_in, dtype=torch.bfloat16)
        assert _tma_ok(g.t(), x, out), (T, n_out, k_in)                            # weight gradient
        assert _tma_ok(g, w, torch.empty(T, k_in, dtype=torch.bfloat16))          # input gradient
        assert _tma_ok(x, w.t(), torch.empty(T, n_out, dtype=torch.bfloat16))     # forward
    odd = torch.empty(8192, 1001, dtype=torch.bfloat16)  # row stride 2002 bytes: not 16-byte aligned
    assert not _tma_ok(odd.t(), torch.empty(8192, 64, dtype=torch.bfloat16), torch.empty(1001, 64,
                                                                                       dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_stacked_weights_same_bits(device, gen, dtype):
    """linear over weights stacked by rows == each weight's own linear, bit for bit: an
    element's sum depends on K alone (not on N, nor on the config N picks). The sampler
    runs q/k/v and gate/up this way (models/qwen3.py fuse_projections)."""
    if device == "cuda":  # Qwen3-8B q/k/v and gate/up (K 4096), 0.6B q/k/v (K 1024)
        cases = [(4096, (4096, 1024, 1024)), (4096, (12288, 12288)), (1024, (2048, 1024, 1024))]
        rows = (1, 7, 64, 129, 300, 700)
    else:
        cases = [(128, (128, 64, 64)), (128, (384, 384)), (77, (45, 13, 30))]
        rows = (1, 7, 64, 129)
    for K, outs in cases:
        ws = [_rand(gen, n, K, dtype=dtype, device=device) for n in outs]
        stacked = torch.cat(ws)
        for m in rows:
            x = _rand(gen, m, K, dtype=dtype, device=device)
            parts = linear(x, stacked).split(list(outs), dim=-1)
            for i, (w, part) in enumerate(zip(ws, parts)):
                assert torch.equal(part, linear(x, w)), f"K={K}, N={outs}, M={m}: block {i}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_addmm_linear_rows_invariant(device, gen, dtype):
    x = _rand(gen, 200, 77, dtype=dtype, device=device)
    w = _rand(gen, 45, 77, dtype=dtype, device=device)
    bias = _rand(gen, 45, dtype=dtype, device=device)
    lin_alone = torch.cat([linear(x[i:i + 1], w, bias) for i in range(x.shape[0])])
    add_alone = torch.cat([addmm_forward(bias, x[i:i + 1], w.t(), beta=0.5, alpha=2.0) for i in range(x.shape[0])])
    for s in (1, 2, 3, 7, 16, 31, 64, 65, 200):
        idx = torch.randperm(x.shape[0], generator=gen)[:s].to(device)
        assert torch.equal(linear(x[idx], w, bias), lin_alone[idx]), f"linear, batch size {s}"
        assert torch.equal(addmm_forward(bias, x[idx], w.t(), beta=0.5, alpha=2.0), add_alone[idx]), f"addmm {s}"
    x3 = x[:120].reshape(4, 30, 77)
    assert torch.equal(linear(x3, w, bias)[2, 5], lin_alone[65])  # [..., K] leading dims


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bmm_invariant(device, gen, dtype):
    a = _rand(gen, 9, 40, 130, dtype=dtype, device=device)
    b = _rand(gen, 9, 130, 33, dtype=dtype, device=device)
    full = bmm_forward(a, b)
    for i in range(9):
        assert torch.equal(bmm_forward(a[i:i + 1], b[i:i + 1])[0], full[i])
        assert torch.equal(mm_forward(a[i], b[i]), full[i])
        assert torch.equal(bmm_forward(a[i:i + 1, 3:17], b[i:i + 1])[0], full[i, 3:17])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_backward_invariant(device, gen, dtype):
    """Run-to-run determinism of every gradient (two runs, torch.equal)."""
    x0 = _rand(gen, 3, 37, 150, dtype=dtype, device=device)
    w0 = _rand(gen, 70, 150, dtype=dtype, device=device)
    b0 = _rand(gen, 70, dtype=dtype, device=device)
    g = _rand(gen, 3, 37, 70, dtype=dtype, device=device)
    grads = []
    for _ in range(2):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        linear(x, w, b).backward(g)
        grads.append((x.grad, w.grad, b.grad))
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


_INTERPRETED_TMA = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from exact_kernels import matmul
from exact_kernels.matmul import MMConfig, _launch_tma, _tma_ok
matmul.sm_count = lambda index: 4  # CPU tensors: device -1, no CUDA query; only the persistent walk asks
g = torch.Generator().manual_seed(0)
for cfg in (MMConfig(32, 32, 16, 4, 2, tma=True), MMConfig(16, 32, 32, 4, 2, tma=True, persistent=True)):
    for M, K, N in ((40, 48, 24), (64, 104, 40), (24, 8, 16)):
        a = torch.randn(M, K, generator=g).half()  # fp16: the interpreter has no bf16 arithmetic
        b = torch.randn(K, N, generator=g).half()
        outs = {}
        for a_name, aa in (("a", a), ("a column-major", a.t().contiguous().t())):
            for b_name, bb in (("b", b), ("b column-major", b.t().contiguous().t())):
                out = torch.empty(M, N, dtype=torch.float16)
                assert _tma_ok(aa, bb, out), (M, K, N, a_name, b_name)
                _launch_tma(aa, bb, out, cfg)
                outs[a_name, b_name] = out
        first = outs["a", "b"]
        for key, o in outs.items():
            assert torch.equal(o, first), (cfg, M, K, N, key)
        torch.testing.assert_close(first.double(), a.double() @ b.double(), rtol=2e-3, atol=2e-3)
print("same bits")
"""


def test_tma_layouts_interpreted_same_bits(tmp_path):
    """CPU, the Triton interpreter: the TMA kernel gives the same bits whether a and b
    are stored row- or column-major (A_KMAJOR: the weight gradient's g.t(); B_KMAJOR: a
    linear's W.t()), persistent or not, and is close to a float64 product."""
    import subprocess
    import sys

    script = tmp_path / "interpreted.py"
    script.write_text(_INTERPRETED_TMA)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "same bits" in run.stdout, run.stdout + run.stderr
