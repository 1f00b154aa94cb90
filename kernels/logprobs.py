"""Batch-invariant log-softmax, token log-probabilities and row mean.

THE logprob function of rlhf_exact: the sampler (inside vLLM) and the trainer both
call `token_logprobs`, so their logprobs are equal bit for bit on a platform.

Definition, for one row of logits l [V] (bf16, fp16 or fp32) and temperature tau:

    t    = float32(tau)                    (the Python float rounded to fp32)
    z[j] = float32(l[j]) / t               (IEEE fp32 division, correctly rounded;
                                            not a multiplication by 1/t)
    m    = max_j z[j]                      (exact: max has no rounding)
    s    = sum_j exp(z[j] - m)             (fixed order, below)
    logprob[j] = (z[j] - m) - log(s)       fp32

`token_logprobs(logits, token_ids, tau)[r] = logprob_r[token_ids[r]]`: the raw logits
after temperature only. Top-k / top-p do not enter: they shape which token is sampled,
never the logprob we report or train on (the logprob is that of the full
temperature-scaled distribution). tau = 1 is an exact identity on z.

Reduction order (depends only on V and constants, never on the rows):
- CUDA (Triton): one row per program, chunks of BLOCK = min(4096,
  next_power_of_2(V)) lanes; pass 1 keeps a running max per lane, pass 2 adds
  exp(z - m) per lane in chunk order, then tl.sum over the BLOCK lanes (a tree fixed
  by BLOCK and num_warps, both functions of V). exp/log are Triton's tl.exp/tl.log.
- CPU (C++, csrc/rows.cpp): 16 lanes, element j in lane j % 16, lanes combined by a
  fixed pairwise tree; exp is exp_fixed (a fixed polynomial of IEEE operations, about
  1 ulp, libm-independent), log is libm logf (once per row).
CPU and CUDA differ in the last bits (CPU == CPU, GPU == GPU, never CPU == GPU).

Gradients (w.r.t. logits, returned in logits.dtype, p[j] = exp(logprob[j])):
    token_logprobs: d l[j] = g * (onehot[j] - p[j]) / t    (no [T, V] fp32 tensor in
                    the forward: only (m, log s) per row are kept)
    log_softmax:    d l[j] = (g[j] - p[j] * sum_j g[j]) / t   (sum in the order above)

`row_mean(x [R, N]) -> [R]` fp32: sum in the order above (CUDA BLOCK = min(4096,
next_power_of_2(N))) divided by N (IEEE). The exact-mode switch uses it for aten
mean.dim.

Bad token ids (outside [0, V)): ValueError on CPU; on CUDA the check would need a
device-to-host sync (and break CUDA-graph capture), so the kernel returns NaN for
that row instead of reading out of bounds.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._checks import check, check_float, check_same_device, shapes

_MAX_BLOCK = 4096
_INT_DTYPES = (torch.int32, torch.int64)


def _canonical(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _block(n: int) -> tuple[int, int]:
    block = min(_MAX_BLOCK, triton.next_power_of_2(n))
    return block, (8 if block >= 2048 else 4)


@triton.jit
def _row_stats(L, row, V, temp, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc_m = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        z = tl.math.div_rn(tl.load(L + row * V + cols, mask=cols < V, other=float("-inf")).to(tl.float32), temp)
        acc_m = tl.maximum(acc_m, z)
    m = tl.max(acc_m, axis=0)
    acc_s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        z = tl.math.div_rn(tl.load(L + row * V + cols, mask=mask, other=0.0).to(tl.float32), temp)
        acc_s += tl.where(mask, tl.exp(z - m), 0.0)
    return m, tl.log(tl.sum(acc_s, axis=0))


@triton.jit
def _log_softmax_fwd_kernel(L, OUT, STATS, V, temp, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    m, ls = _row_stats(L, row, V, temp, BLOCK)
    offs = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        z = tl.math.div_rn(tl.load(L + row * V + cols, mask=mask, other=0.0).to(tl.float32), temp)
        tl.store(OUT + row * V + cols, (z - m) - ls, mask=mask)
    tl.store(STATS + 2 * row, m)
    tl.store(STATS + 2 * row + 1, ls)


@triton.jit
def _token_fwd_kernel(L, IDS, OUT, STATS, V, temp, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    m, ls = _row_stats(L, row, V, temp, BLOCK)
    tok = tl.load(IDS + row).to(tl.int64)
    valid = (tok >= 0) & (tok < V)
    zt = tl.math.div_rn(tl.load(L + row * V + tl.where(valid, tok, 0)).to(tl.float32), temp)
    tl.store(OUT + row, tl.where(valid, (zt - m) - ls, float("nan")))
    tl.store(STATS + 2 * row, m)
    tl.store(STATS + 2 * row + 1, ls)


@triton.jit
def _token_bwd_kernel(G, L, IDS, STATS, DL, V, temp, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < V
    m = tl.load(STATS + 2 * row)
    ls = tl.load(STATS + 2 * row + 1)
    g = tl.load(G + row)
    tok = tl.load(IDS + row).to(tl.int64)
    z = tl.math.div_rn(tl.load(L + row * V + cols, mask=mask, other=0.0).to(tl.float32), temp)
    p = tl.exp((z - m) - ls)
    onehot = tl.where(cols == tok, 1.0, 0.0)
    tl.store(DL + row * V + cols, tl.math.div_rn(g * (onehot - p), temp).to(DL.dtype.element_ty), mask=mask)


@triton.jit
def _log_softmax_bwd_kernel(G, OUT, DL, V, temp, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        acc += tl.load(G + row * V + cols, mask=cols < V, other=0.0)
    gs = tl.sum(acc, axis=0)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        g = tl.load(G + row * V + cols, mask=mask, other=0.0)
        y = tl.load(OUT + row * V + cols, mask=mask, other=0.0)
        tl.store(DL + row * V + cols, tl.math.div_rn(g - tl.exp(y) * gs, temp).to(DL.dtype.element_ty), mask=mask)


@triton.jit
def _row_mean_kernel(X, OUT, N, Nf, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + offs
        acc += tl.load(X + row * N + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(OUT + row, tl.math.div_rn(tl.sum(acc, axis=0), Nf))


def _cpu_ops():
    from ._cpu_build import load_cpu_ops
    return load_cpu_ops("rows")


def _check_logits(op: str, logits: torch.Tensor, temperature: float) -> None:
    check_float(op, "logits", logits)
    check(logits.dim() == 2 and logits.shape[1] > 0, op,
          f"expected logits [T, V] with V > 0; got {shapes(logits=logits)}")
    check(isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0, op,
          f"temperature must be a finite number > 0, got {temperature!r}")
    check(math.isfinite(float(torch.tensor(float(temperature), dtype=torch.float32))), op,
          f"temperature {temperature!r} overflows fp32")


class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, temp):
        T, V = logits.shape
        out = torch.empty((T, V), dtype=torch.float32, device=logits.device)
        stats = torch.empty((T, 2), dtype=torch.float32, device=logits.device)
        if T > 0:
            if logits.is_cuda:
                block, warps = _block(V)
                _log_softmax_fwd_kernel[(T,)](logits, out, stats, V, temp, BLOCK=block, num_warps=warps)
            else:
                _cpu_ops().rows_log_softmax_fwd(logits, temp, out, stats)
        ctx.save_for_backward(out)
        ctx.temp, ctx.dtype = temp, logits.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        T, V = out.shape
        grad = torch.empty((T, V), dtype=ctx.dtype, device=out.device)
        if T > 0:
            g = _canonical(g.float())
            if out.is_cuda:
                block, warps = _block(V)
                _log_softmax_bwd_kernel[(T,)](g, out, grad, V, ctx.temp, BLOCK=block, num_warps=warps)
            else:
                _cpu_ops().rows_log_softmax_bwd(g, out, ctx.temp, grad)
        return grad, None


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, temp):
        T, V = logits.shape
        out = torch.empty((T,), dtype=torch.float32, device=logits.device)
        stats = torch.empty((T, 2), dtype=torch.float32, device=logits.device)
        if T > 0:
            if logits.is_cuda:
                block, warps = _block(V)
                _token_fwd_kernel[(T,)](logits, ids, out, stats, V, temp, BLOCK=block, num_warps=warps)
            else:
                _cpu_ops().rows_token_logprobs_fwd(logits, ids, temp, out, stats)
        ctx.save_for_backward(logits, ids, stats)
        ctx.temp = temp
        return out

    @staticmethod
    def backward(ctx, g):
        logits, ids, stats = ctx.saved_tensors
        T, V = logits.shape
        grad = torch.empty_like(logits)
        if T > 0:
            g = _canonical(g.float())
            if logits.is_cuda:
                block, warps = _block(V)
                _token_bwd_kernel[(T, triton.cdiv(V, block))](g, logits, ids, stats, grad, V, ctx.temp,
                                                             BLOCK=block, num_warps=warps)
            else:
                _cpu_ops().rows_token_logprobs_bwd(g, logits, ids, stats, ctx.temp, grad)
        return grad, None, None


class _RowMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        R, N = x.shape
        out = torch.empty((R,), dtype=torch.float32, device=x.device)
        if R > 0:
            if x.is_cuda:
                block, warps = _block(N)
                _row_mean_kernel[(R,)](x, out, N, float(N), BLOCK=block, num_warps=warps)
            else:
                _cpu_ops().rows_row_mean(x, out)
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        R, N = ctx.shape
        return (g.float() / float(N)).unsqueeze(1).expand(R, N).to(ctx.dtype).contiguous()


def log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [T, V] -> logprobs [T, V] fp32 (definition in the module docstring).
    Differentiable in logits."""
    _check_logits("log_softmax", logits, temperature)
    check_same_device("log_softmax", logits=logits)
    return _LogSoftmax.apply(_canonical(logits), float(temperature))


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [T, V], token_ids [T] (int32/int64) -> logprobs [T] fp32:
    log_softmax(logits / temperature)[t, token_ids[t]]. Differentiable in logits."""
    op = "token_logprobs"
    _check_logits(op, logits, temperature)
    check(isinstance(token_ids, torch.Tensor) and token_ids.dtype in _INT_DTYPES, op,
          f"token_ids must be an int32/int64 tensor, got {getattr(token_ids, 'dtype', type(token_ids).__name__)}")
    dev = check_same_device(op, logits=logits, token_ids=token_ids)
    check(token_ids.dim() == 1 and token_ids.shape[0] == logits.shape[0], op,
          f"expected logits [T, V] and token_ids [T]; got {shapes(logits=logits, token_ids=token_ids)}")
    if dev.type == "cpu":
        if token_ids.numel() > 0:
            lo, hi = int(token_ids.min()), int(token_ids.max())
            check(lo >= 0 and hi < logits.shape[1], op,
                  f"token ids must lie in [0, {logits.shape[1]}), got [{lo}, {hi}]; "
                  f"{shapes(logits=logits, token_ids=token_ids)}")
        token_ids = token_ids.long()
    return _TokenLogprobs.apply(_canonical(logits), _canonical(token_ids), float(temperature))


def row_mean(x: torch.Tensor) -> torch.Tensor:
    """x [R, N] -> [R] fp32: fixed-order sum / N. Differentiable."""
    op = "row_mean"
    check_float(op, "x", x)
    check_same_device(op, x=x)
    check(x.dim() == 2 and x.shape[1] > 0, op, f"expected x [R, N] with N > 0; got {shapes(x=x)}")
    return _RowMean.apply(_canonical(x))
