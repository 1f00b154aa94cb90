"""Batch-invariant matmul: mm, addmm, bmm and linear (with autograd) for CPU and CUDA.

Math: C[m, n] = sum_k A[m, k] * B[k, n], accumulated in fp32, rounded once to the
operands' dtype (bf16, fp16 or fp32; both operands the same dtype). addmm follows
aten: out = beta * bias + alpha * (A @ B), evaluated in fp32 on the accumulator and
rounded once (beta == 0 ignores bias, NaNs included). linear(x, W, b) = x @ W^T + b.

Reduction order (what makes it batch invariant):

* CPU (kernels/csrc/matmul.cpp): each element is one sequential fp32 FMA chain,
  acc = fma(A[m,k], B[k,n], acc) for k = 0..K-1. Vectorisation runs across output
  columns, never across k, so register blocking, cache blocking, edge tiles, SIMD
  width (AVX-512, AVX2, scalar) and the OpenMP split over output tiles cannot change
  an element's order. It is fixed by K alone.
* CUDA (Triton, `_mm_kernel` below): one program owns a BLOCK_M x BLOCK_N output tile
  and walks K from 0 upwards in BLOCK_K steps, `acc = tl.dot(a, b, acc)`, fp32
  accumulator, no split-K. The tile's rows never meet: row m's result depends on
  row m of A, on B, and on the chain of tensor-core instructions over k. Within one
  compiled configuration that chain is fixed by (N, K). The configuration is chosen
  from `_CONFIGS` keyed by (N, K); it may also depend on an M bucket only because
  `tests/kernels/test_matmul.py::test_cuda_configs_invariant` proves every bucket's
  configuration gives bit-identical results on the same inputs (the tensor-core MMA
  lowering accumulates k in the same sequential 16-wide steps whatever the tile).
  fp32 operands use input_precision="ieee" (no TF32).

So row i of `mm(a, b)` equals `mm(a[i:i+1], b)` bit for bit, whatever the batch, its
position in it or the other rows; bmm applies this per batch element.

Backward (linear, mm, bmm, addmm): grad_x = g @ W, grad_W = g^T @ x, grad_bias = a
fixed-order sum over rows (ones[1, rows] @ g through the same kernel, i.e. a
sequential fp32 sum). All go through the same kernels, so backward is deterministic
run to run. grad_W and grad_bias reduce over the rows: they depend on which rows
are in the batch (by definition), not on run-to-run scheduling.

Limits: CPU results differ from CUDA results (different order). fp32 on CUDA runs on
CUDA cores (ieee dot), far slower than bf16. Operands of different dtypes are an
error, not promoted. Strided inputs are read through their strides where the kernel
supports it, otherwise made contiguous (the order does not depend on the layout).

Raw forward functions without autograd (`mm_forward`, `addmm_forward`,
`bmm_forward`) never call torch.mm / torch.matmul / `@`, so the exact-mode switch
can route aten::mm / addmm / bmm to them without recursion.

Run the tests: python -m pytest tests/kernels/test_matmul.py -q
Benchmark: python benchmarks/bench_matmul.py [--device cpu] [--quick]
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ._checks import check, check_float, check_same_device, fail, shapes
from ._device import sm_count

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack triton; the CUDA path then cannot run anyway
    triton = None


# ----------------------------------------------------------------------------- CPU

def _cpu_ops():
    from ._cpu_build import load_cpu_ops

    return load_cpu_ops("matmul")


# ----------------------------------------------------------------------------- CUDA

@dataclasses.dataclass(frozen=True)
class MMConfig:
    """One Triton launch configuration. BLOCK_K and the instruction chain fix the
    reduction order; the rest only tiles the output."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    tma: bool = False          # TMA descriptor loads (Hopper+, aligned 2-D operands, no bias)
    persistent: bool = False   # with tma: one program per SM walking tiles


# Config table: (N, K) -> ((max_M, config), ...) in increasing max_M; the last bucket
# covers every larger M. `None` is the default for shapes not listed. Tune per layer
# shape here; any new bucket must keep test_cuda_configs_invariant green (it checks
# every bucket of every entry against the first one, bit for bit).
_INF = 1 << 62
_C = MMConfig
# Measured on H100 (bf16, benchmarks/bench_matmul.py --sweep): small M is bandwidth
# bound (thin BLOCK_N tiles for enough programs), large M is compute bound.
_T = dict(tma=True)
_TP = dict(tma=True, persistent=True)
_DEFAULT_BUCKETS = (
    (16, _C(16, 32, 128, 4, 6)),
    (32, _C(32, 64, 128, 4, 4)),
    (128, _C(64, 64, 64, 4, 6)),
    (512, _C(128, 128, 64, 4, 5, **_T)),
    (_INF, _C(128, 256, 64, 8, 3, **_T)),
)
# M > 128: TMA kernel (bench_matmul.py --sweep, CUDA graphs, H100: 0.96-1.21x cuBLAS at
# M = 512 and 2048 against 1.27-1.72x for the best pointer config). TMA needs aligned
# operands and no bias; otherwise the same MMConfig runs in the pointer kernel.
_CONFIGS: dict[tuple[int, int] | None, tuple[tuple[int, MMConfig], ...]] = {
    None: _DEFAULT_BUCKETS,
    # Qwen3-8B: qkv, o, gate_up, down, lm_head. M <= 128 re-tuned on the H200 under CUDA
    # graphs (benchmarks/results/h200_matmul_small_m.json): at M = 64 (decode at batch 64)
    # the sum over the five shapes went from 1.19x cuBLAS to 0.98x: TMA loads at BLOCK_M 64,
    # and narrower tiles where N = 4096 left SMs idle. M 129-512 (decode at batch 256):
    # qkv and gate_up 128x128 tiles to M = 256, lm_head 128x256 above M = 128
    # (benchmarks/results/h200_matmul_m256.json): the M = 256 sum 1.13x -> 1.06x cuBLAS.
    (6144, 4096): ((16, _C(16, 32, 128, 4, 6)), (32, _C(32, 64, 256, 4, 3)), (64, _C(64, 64, 128, 4, 4, **_T)),
                   (128, _C(64, 64, 64, 4, 6)), (256, _C(128, 128, 64, 4, 5, **_T)),
                   (512, _C(128, 256, 64, 8, 3, **_TP)), (_INF, _C(128, 256, 64, 8, 3, **_T))),
    (4096, 4096): ((32, _C(16, 32, 128, 4, 6)), (128, _C(64, 64, 128, 4, 4, **_T)),
                   (512, _C(128, 128, 64, 4, 5, **_T)), (2048, _C(256, 128, 64, 8, 3, **_TP)),
                   (_INF, _C(128, 256, 64, 8, 3, **_T))),
    (24576, 4096): ((16, _C(16, 32, 128, 4, 6)), (32, _C(32, 64, 128, 4, 4)), (64, _C(64, 128, 64, 4, 4, **_T)),
                    (128, _C(128, 256, 64, 8, 3, **_T)), (256, _C(128, 128, 64, 8, 4, **_TP)),
                    (_INF, _C(128, 256, 64, 8, 3, **_T))),
    (4096, 12288): ((32, _C(16, 32, 128, 4, 6)), (64, _C(64, 32, 128, 4, 5, **_T)), (128, _C(64, 64, 128, 4, 4, **_T)),
                    (512, _C(128, 128, 64, 4, 5, **_T)), (_INF, _C(128, 256, 64, 8, 3, **_T))),
    (151936, 4096): ((16, _C(16, 64, 256, 4, 3)), (32, _C(32, 64, 128, 4, 4)), (64, _C(64, 128, 64, 4, 4, **_T)),
                     (128, _C(128, 128, 128, 8, 3, **_TP)), (_INF, _C(128, 256, 64, 8, 3, **_T))),
}


def _pick_config(M: int, N: int, K: int, dtype: torch.dtype) -> MMConfig:
    buckets = _CONFIGS.get((N, K), _CONFIGS[None])
    cfg = next(c for max_m, c in buckets if M <= max_m)
    if dtype == torch.float32:
        # ieee fp32 dot runs on CUDA cores with fp32 tiles: keep shared memory in bounds.
        cfg = dataclasses.replace(cfg, block_m=min(cfg.block_m, 64), block_n=min(cfg.block_n, 64),
                                  block_k=32, num_stages=min(cfg.num_stages, 3), num_warps=4, tma=False)
    return cfg


# (M, N, K, dtype) -> MMConfig: the table lookup costs microseconds per call otherwise.
# Bounded (cleared when full): M takes arbitrary values in training.
_CFG_CACHE: dict[tuple, MMConfig] = {}


def _config(M: int, N: int, K: int, dtype: torch.dtype) -> MMConfig:
    key = (M, N, K, dtype)
    cfg = _CFG_CACHE.get(key)
    if cfg is None:
        if len(_CFG_CACHE) > 4096:
            _CFG_CACHE.clear()
        cfg = _CFG_CACHE[key] = _pick_config(M, N, K, dtype)
    return cfg


if triton is not None:
    # M is not specialised (no ==1 / %16 variants): it only feeds masks and the tile
    # walk, and leaving it out keeps the launch-cache key free of M.
    @triton.jit(do_not_specialize=["M"])
    def _mm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                   s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_biasm, s_biasn,
                   alpha, beta,
                   HAS_BIAS: tl.constexpr, SCALE: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        batch = tl.program_id(1).to(tl.int64)
        grid_m = tl.cdiv(M, BLOCK_M)
        grid_n = tl.cdiv(N, BLOCK_N)
        # Grouped tile order for L2 reuse; it changes which tile runs when, not any sum.
        width = GROUP_M * grid_n
        group = pid // width
        first_m = group * GROUP_M
        size_m = min(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < N
        rm = offs_m.to(tl.int64)
        a_ptrs = a_ptr + batch * s_ab + rm[:, None] * s_am + offs_k[None, :] * s_ak
        b_ptrs = b_ptr + batch * s_bb + offs_k[:, None] * s_bk + offs_n[None, :].to(tl.int64) * s_bn

        # Out-of-range rows/cols/k load zeros: they only feed elements that are never
        # stored (rows, cols) or add exact zero products at the same place for every M (k).
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=m_ok[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & n_ok[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * s_ak
            b_ptrs += BLOCK_K * s_bk

        if SCALE:
            acc = acc * alpha
        c_mask = m_ok[:, None] & n_ok[None, :]
        if HAS_BIAS:
            bias = tl.load(bias_ptr + rm[:, None] * s_biasm + offs_n[None, :] * s_biasn, mask=c_mask,
                           other=0.0).to(tl.float32)
            if SCALE:
                bias = bias * beta
            acc = acc + bias
        c_ptrs = c_ptr + batch * s_cb + rm[:, None] * s_cm + offs_n[None, :] * s_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


    @triton.jit(do_not_specialize=["M", "NUM_PROGS"])
    def _mm_tma_kernel(a_desc, b_desc, c_desc, M, N, K, A_KMAJOR: tl.constexpr, B_KMAJOR: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, NUM_PROGS, FLATTEN: tl.constexpr):
        # Same per-element chain as _mm_kernel (acc = tl.dot(a, b, acc) over BLOCK_K
        # steps from k = 0; TMA zero-fills out-of-range k, rows and cols); only the
        # loads and the tile walk differ. test_cuda_configs_invariant checks the bits.
        # A_KMAJOR: a is stored as its transpose [K, M] (the weight gradient's g.t());
        # B_KMAJOR: b as [N, K] (a linear's W.t()). The tile is loaded and transposed in
        # registers; the products and their order are the same.
        grid_m = tl.cdiv(M, BLOCK_M)
        grid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        num_tiles = grid_m * grid_n
        width = GROUP_M * grid_n
        for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGS, flatten=FLATTEN):
            group = tile // width
            first_m = group * GROUP_M
            size_m = min(grid_m - first_m, GROUP_M)
            pid_m = first_m + (tile % width) % size_m
            pid_n = (tile % width) // size_m
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                if A_KMAJOR:
                    a = a_desc.load([ki * BLOCK_K, off_m]).T
                else:
                    a = a_desc.load([off_m, ki * BLOCK_K])
                if B_KMAJOR:
                    b = b_desc.load([off_n, ki * BLOCK_K]).T
                else:
                    b = b_desc.load([ki * BLOCK_K, off_n])
                acc = tl.dot(a, b, acc)
            c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


_I32 = 1 << 31

# Launch cache. `kernel[grid](...)` costs tens of microseconds of Python per call
# (Triton's binder, specialisation key, option parsing, launch-metadata dict), more
# than a small-M kernel runs. So the first call of each specialisation goes through
# it (compiling if needed) and returns the CompiledKernel, which is cached here under
# our own key; later calls use `compiled.run(...)` directly: the call JITFunction.run
# ends with, same signature in triton 3.6 and 3.9, all kernel arguments constexprs
# included. The key holds everything Triton specialises these kernels on: the config
# (constexprs, warps, stages), flags, dtype, device, every integer argument's value
# except M (not specialised) and batch strides (their ==1 / %16 / int64 class), and
# each pointer's 16-byte alignment. Launch hooks (profilers) take the ordinary path.
_LAUNCH_CACHE: dict[tuple, object] = {}
_get_stream = None


def _ispec(v: int):
    """Triton's specialisation class of an integer argument (==1, %16, int64)."""
    return 1 if v == 1 else (v % 16 == 0, -_I32 <= v < _I32)


def _hooks_on() -> bool:
    r = triton.knobs.runtime
    return any(h is not None and getattr(h, "calls", True) for h in (r.launch_enter_hook, r.launch_exit_hook))


def _launch(kernel, key: tuple, grid: tuple, dev: int, args: tuple, cfg: MMConfig) -> None:
    global _get_stream
    compiled = _LAUNCH_CACHE.get(key)
    if compiled is not None and not _hooks_on():
        compiled.run(grid[0], grid[1], 1, _get_stream(dev), compiled.function, compiled.packed_metadata,
                     None, None, None, *args)
        return
    compiled = kernel[grid](*args, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if hasattr(compiled, "packed_metadata") and hasattr(compiled, "function"):
        if _get_stream is None:
            _get_stream = triton.runtime.driver.active.get_current_stream
        if len(_LAUNCH_CACHE) > 4096:
            _LAUNCH_CACHE.clear()
        _LAUNCH_CACHE[key] = compiled


def _kmajor(t: torch.Tensor) -> bool:
    """A 2-D operand stored as its transpose (column-major): stride (1, rows)."""
    return t.stride(0) == 1 and t.stride(1) != 1


def _tma_ok(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    """TMA needs 16-byte aligned bases and row strides and a unit last stride (of the
    stored layout: a column-major operand is described by its transpose)."""
    def ok(t):
        return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(-2) * t.element_size()) % 16 == 0)
    at = a.transpose(0, 1) if _kmajor(a) else a
    bt = b.transpose(0, 1) if _kmajor(b) else b
    return a.dtype != torch.float32 and ok(at) and ok(bt) and ok(out)


def _launch_tma(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, cfg: MMConfig) -> None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, K = a.shape
    N = b.shape[1]
    a_kmajor, kmajor = _kmajor(a), _kmajor(b)
    if a_kmajor:
        a_desc = TensorDescriptor.from_tensor(a.t(), [cfg.block_k, cfg.block_m])
    else:
        a_desc = TensorDescriptor.from_tensor(a, [cfg.block_m, cfg.block_k])
    if kmajor:
        b_desc = TensorDescriptor.from_tensor(b.t(), [cfg.block_n, cfg.block_k])
    else:
        b_desc = TensorDescriptor.from_tensor(b, [cfg.block_k, cfg.block_n])
    c_desc = TensorDescriptor.from_tensor(out, [cfg.block_m, cfg.block_n])
    tiles = triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n)
    dev = a.get_device()
    progs = min(tiles, sm_count(dev)) if cfg.persistent else tiles
    # Descriptor shapes hold M: its class joins the key (whatever Triton makes of it).
    # A column-major a is stored with row stride >= M: like M, its class joins the key.
    a_stride = _ispec(a.stride(1)) if a_kmajor else a.stride(0)
    key = ("tma", cfg, a.dtype, dev, a_kmajor, kmajor, N, K, _ispec(M), a_stride, b.stride(0), b.stride(1))
    _launch(_mm_tma_kernel, key, (progs, 1), dev,
            (a_desc, b_desc, c_desc, M, N, K, a_kmajor, kmajor, cfg.block_m, cfg.block_n, cfg.block_k,
             cfg.group_m, progs, cfg.persistent), cfg)


def _launch_ptr(a, b, out, bias, Bsz: int, M: int, N: int, K: int, strides: tuple, alpha: float, beta: float,
                cfg: MMConfig) -> None:
    """strides = (s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_biasm, s_biasn); bias None or a tensor."""
    has_bias = bias is not None
    scale = alpha != 1 or (has_bias and beta != 1)
    dev = a.get_device()
    if Bsz == 1:
        strides = (0, *strides[1:3], 0, *strides[4:6], 0, *strides[7:])
        bkey = None
    else:
        bkey = (_ispec(strides[0]), _ispec(strides[3]), _ispec(strides[6]))
    if has_bias:
        bkey = (bkey, bias.data_ptr() % 16 == 0)
    key = (cfg, scale, a.dtype, dev, N, K, strides[1:3], strides[4:6], strides[7:], bkey,
           a.data_ptr() % 16 == 0, b.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0)
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), Bsz)
    _launch(_mm_kernel, key, grid, dev,
            (a, b, out, bias if has_bias else out, M, N, K, *strides, float(alpha), float(beta),
             has_bias, scale, a.dtype == torch.float32, cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m), cfg)


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """The kernel reads any strides, but one of the last two must be 1 for coalesced
    loads; otherwise copy. (The reduction order does not depend on the layout.)"""
    if t.stride(-1) == 1 or t.stride(-2) == 1:
        return t
    return t.contiguous()


def _mm_cuda(a: torch.Tensor, b: torch.Tensor, bias2: torch.Tensor | None, beta: float, alpha: float,
             config: MMConfig | None = None) -> torch.Tensor:
    """2-D fast path: a [M, K] @ b [K, N] (+ bias2 [M, N]) -> [M, N]; inputs checked."""
    if triton is None:
        raise RuntimeError("exact_kernels.matmul: CUDA path needs triton")
    M, K = a.shape
    N = b.shape[1]
    sa, sb = a.stride(), b.stride()
    if sa[1] != 1 and sa[0] != 1:
        a = a.contiguous()
        sa = a.stride()
    if sb[1] != 1 and sb[0] != 1:
        b = b.contiguous()
        sb = b.stride()
    if a.get_device() != torch.cuda.current_device():
        with torch.cuda.device(a.device):
            return _mm_cuda(a, b, bias2, beta, alpha, config)
    out = a.new_empty((M, N))
    cfg = config or _config(M, N, K, a.dtype)
    if beta == 0:
        bias2 = None
    if cfg.tma and bias2 is None and alpha == 1 and _tma_ok(a, b, out):
        _launch_tma(a, b, out, cfg)
        return out
    sbias = bias2.stride() if bias2 is not None else (0, 0)
    _launch_ptr(a, b, out, bias2, 1, M, N, K, (0, sa[0], sa[1], 0, sb[0], sb[1], 0, N, 1, *sbias),
                alpha, beta, cfg)
    return out


def _launch_cuda(a3: torch.Tensor, b3: torch.Tensor, bias2: torch.Tensor | None, beta: float, alpha: float,
                 config: MMConfig | None = None) -> torch.Tensor:
    """a3 [B, M, K] @ b3 [B, K, N] (+ bias2 [M, N], shared by the batch) -> [B, M, N]."""
    if triton is None:
        raise RuntimeError("exact_kernels.matmul: CUDA path needs triton")
    Bsz, M, K = a3.shape
    N = b3.shape[2]
    if Bsz == 1:
        return _mm_cuda(a3[0], b3[0], bias2, beta, alpha, config).unsqueeze(0)
    if a3.get_device() != torch.cuda.current_device():
        with torch.cuda.device(a3.device):
            return _launch_cuda(a3, b3, bias2, beta, alpha, config)
    a3, b3 = _kernel_ready(a3), _kernel_ready(b3)
    out = a3.new_empty((Bsz, M, N))
    cfg = config or _config(M, N, K, a3.dtype)
    if beta == 0:
        bias2 = None
    sbias = bias2.stride() if bias2 is not None else (0, 0)
    _launch_ptr(a3, b3, out, bias2, Bsz, M, N, K, (*a3.stride(), *b3.stride(), *out.stride(), *sbias),
                alpha, beta, cfg)
    return out


# ----------------------------------------------------------------------------- checks

def _check_pair(op: str, a: torch.Tensor, b: torch.Tensor, ndim: int, **extra) -> None:
    check_float(op, "a", a)
    check_float(op, "b", b)
    desc = shapes(a=a, b=b, **extra)
    check(a.dim() == ndim and b.dim() == ndim, op, f"expected {ndim}-D operands, got {desc}")
    check(a.dtype == b.dtype, op, f"dtypes differ: a {a.dtype}, b {b.dtype} ({desc})")
    check(a.shape[-1] == b.shape[-2], op, f"inner dimensions differ: {desc}")
    if ndim == 3:
        check(a.shape[0] == b.shape[0], op, f"batch sizes differ: {desc}")
    check(all(s > 0 for s in (*a.shape, *b.shape)), op, f"empty dimension: {desc}")
    check_same_device(op, a=a, b=b, **extra)


def _bias_2d(op: str, bias: torch.Tensor, M: int, N: int, dtype: torch.dtype, desc: str) -> torch.Tensor:
    check_float(op, "bias", bias)
    check(bias.dtype == dtype, op, f"bias dtype {bias.dtype} differs from the operands' {dtype} ({desc})")
    check(bias.dim() <= 2, op, f"bias must broadcast to [M, N] = [{M}, {N}] ({desc})")
    try:
        return bias.expand(M, N)
    except RuntimeError:
        raise ValueError(f"{op}: bias does not broadcast to [M, N] = [{M}, {N}] ({desc})") from None


# ----------------------------------------------------------------------------- raw forwards

_FLOATS = (torch.bfloat16, torch.float16, torch.float32)


def _cuda_pair_ok(a, b, ndim: int) -> bool:
    """The common valid CUDA case, checked without building any message; anything else
    goes through `_check_pair`, which raises the detailed ValueError (or passes: CPU)."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.is_cuda and b.is_cuda
            and a.dtype == b.dtype and a.dtype in _FLOATS and a.dim() == ndim and b.dim() == ndim
            and a.shape[-1] == b.shape[-2] and (ndim == 2 or a.shape[0] == b.shape[0])
            and a.numel() > 0 and b.numel() > 0 and a.get_device() == b.get_device())


def mm_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> [M, N], no autograd. Safe inside an aten::mm override."""
    if _cuda_pair_ok(a, b, 2):
        return _mm_cuda(a, b, None, 0.0, 1.0)
    _check_pair("mm", a, b, 2)
    if a.device.type == "cpu":
        return _cpu_ops().mm_gemm(a, b, None, 0.0, 1.0)
    return _mm_cuda(a, b, None, 0.0, 1.0)


def addmm_forward(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1,
                  alpha: float = 1) -> torch.Tensor:
    """beta * bias + alpha * (a [M, K] @ b [K, N]) -> [M, N]; bias broadcasts to [M, N]
    (aten.addmm semantics, one rounding). No autograd."""
    _check_pair("addmm", a, b, 2, bias=bias)
    M, N = a.shape[0], b.shape[1]
    bias2 = _bias_2d("addmm", bias, M, N, a.dtype, shapes(bias=bias, a=a, b=b))
    if a.device.type == "cpu":
        return _cpu_ops().mm_gemm(a, b, bias2 if beta != 0 else None, float(beta), float(alpha))
    return _mm_cuda(a, b, bias2, float(beta), float(alpha))


def bmm_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [B, M, K] @ b [B, K, N] -> [B, M, N], no autograd."""
    if _cuda_pair_ok(a, b, 3):
        return _launch_cuda(a, b, None, 0.0, 1.0)
    _check_pair("bmm", a, b, 3)
    if a.device.type == "cpu":
        return _cpu_ops().mm_bgemm(a, b)
    return _launch_cuda(a, b, None, 0.0, 1.0)


def _row_sum(g: torch.Tensor) -> torch.Tensor:
    """[R, N] -> [N]: sequential fp32 sum over rows (ones[1, R] @ g), rounded once."""
    ones = torch.ones((1, g.shape[0]), dtype=g.dtype, device=g.device)
    return mm_forward(ones, g)[0]


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


# ----------------------------------------------------------------------------- autograd

class _MM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return mm_forward(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = g.contiguous()
        ga = mm_forward(g, _t(b)) if ctx.needs_input_grad[0] else None
        gb = mm_forward(_t(a), g) if ctx.needs_input_grad[1] else None
        return ga, gb


class _AddMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bias, a, b, beta, alpha):
        ctx.save_for_backward(a, b)
        ctx.bias_shape, ctx.beta, ctx.alpha = bias.shape, beta, alpha
        return addmm_forward(bias, a, b, beta=beta, alpha=alpha)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = g.contiguous()
        gbias = ga = gb = None
        if ctx.needs_input_grad[0]:
            gbias = _reduce_to(g, ctx.bias_shape)
            if ctx.beta != 1:
                gbias = gbias * ctx.beta
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gs = g if ctx.alpha == 1 else g * ctx.alpha
            if ctx.needs_input_grad[1]:
                ga = mm_forward(gs, _t(b))
            if ctx.needs_input_grad[2]:
                gb = mm_forward(_t(a), gs)
        return gbias, ga, gb, None, None


def _reduce_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum g [M, N] down to a broadcast bias shape with fixed-order kernel sums."""
    M, N = g.shape
    full = (1,) * (2 - len(shape)) + tuple(shape)
    out = g
    if full[0] == 1 and M != 1:
        out = _row_sum(out).unsqueeze(0)
    if full[1] == 1 and N != 1:
        out = _row_sum(out.t().contiguous()).unsqueeze(1)
    return out.reshape(shape)


class _BMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return bmm_forward(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = g.contiguous()
        ga = bmm_forward(g, _t(b)) if ctx.needs_input_grad[0] else None
        gb = bmm_forward(_t(a), g) if ctx.needs_input_grad[1] else None
        return ga, gb


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias):
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return mm_forward(x2, weight.t())
        return addmm_forward(bias, x2, weight.t())

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        g = g.contiguous()
        gx = mm_forward(g, weight) if ctx.needs_input_grad[0] else None          # [T, N] @ [N, K]
        gw = mm_forward(g.t(), x2) if ctx.needs_input_grad[1] else None          # [N, T] @ [T, K]
        gb = _row_sum(g) if ctx.has_bias and ctx.needs_input_grad[2] else None   # [N]
        return gx, gw, gb


# ----------------------------------------------------------------------------- public API

def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> [M, N] (autograd)."""
    return _MM.apply(a, b)


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1,
          alpha: float = 1) -> torch.Tensor:
    """beta * bias + alpha * (a [M, K] @ b [K, N]) -> [M, N] (autograd)."""
    return _AddMM.apply(bias, a, b, beta, alpha)


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [B, M, K] @ b [B, K, N] -> [B, M, N] (autograd)."""
    return _BMM.apply(a, b)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T + bias [N] -> [..., N] (autograd).

    grad_x = g @ W, grad_W = g^T @ x, grad_bias = sequential sum of g over rows; all
    through the same batch-invariant kernel.
    """
    op = "linear"
    check_float(op, "x", x)
    check_float(op, "weight", weight)
    if not (x.dim() >= 1 and weight.dim() == 2 and x.dtype == weight.dtype and x.shape[-1] == weight.shape[1]
            and x.numel() > 0 and weight.numel() > 0):
        desc = shapes(x=x, weight=weight, bias=bias)  # built only for the error: linear runs per layer
        check(x.dim() >= 1 and weight.dim() == 2, op, f"expected x [..., K] and weight [N, K], got {desc}")
        check(x.dtype == weight.dtype, op, f"dtypes differ: x {x.dtype}, weight {weight.dtype} ({desc})")
        check(x.shape[-1] == weight.shape[1], op, f"inner dimensions differ: {desc}")
        fail(op, f"empty dimension: {desc}")
    if bias is not None:
        check_float(op, "bias", bias)
        check(bias.dtype == x.dtype, op, f"bias dtype {bias.dtype} differs from x's {x.dtype}")
        if not (bias.dim() == 1 and bias.shape[0] == weight.shape[0]):
            fail(op, f"bias must be [N]: {shapes(x=x, weight=weight, bias=bias)}")
    check_same_device(op, x=x, weight=weight, bias=bias)
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), x.shape[-1])
    if torch.is_grad_enabled():
        y = _Linear.apply(x2, weight, bias)
    else:  # inference (the sampler): _Linear.forward's kernels without the autograd node
        y = mm_forward(x2, weight.t()) if bias is None else addmm_forward(bias, x2, weight.t())
    return y.reshape(*lead, weight.shape[0])
