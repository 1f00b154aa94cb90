"""Batch-invariant SiLU-and-mul (the gated MLP activation of Qwen3 / Llama).

Math, elementwise on x [..., 2I] with gate = x[..., :I], up = x[..., I:], T = x.dtype
(fp32 arithmetic, roundings where named; Hugging Face's rounding points for
`act_fn(gate_proj(x)) * up_proj(x)` on T tensors):

    act = round_T(g / (1 + exp(-g)))
    out = round_T(act * u)

Backward (s = 1 / (1 + exp(-g)); results rounded once to T):

    d gate = go * u * s * (1 + g * (1 - s))
    d up   = go * act

No reduction, so nothing depends on the batch as long as every element runs the same
code: CUDA (Triton) uses tl.exp and IEEE division (div_rn) for every element; CPU
(C++, csrc/rows.cpp) uses exp_fixed (a fixed polynomial of IEEE operations, so a
vectorised body and a scalar tail agree bit for bit). CPU and CUDA exp differ in the
last bits: CPU == CPU and GPU == GPU, never CPU == GPU.

Usage: `silu_and_mul(x)`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check, check_float, check_same_device, shapes

_OP = "silu_and_mul"
_BLOCK = 1024


def _canonical(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


@triton.jit
def _fwd_kernel(X, Y, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    g = tl.load(X + row * 2 * I + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * 2 * I + I + cols, mask=mask, other=0.0).to(tl.float32)
    act = tl.math.div_rn(g, 1.0 + tl.exp(-g)).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * I + cols, (act * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(GO, X, DX, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    g = tl.load(X + row * 2 * I + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * 2 * I + I + cols, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(GO + row * I + cols, mask=mask, other=0.0).to(tl.float32)
    den = 1.0 + tl.exp(-g)
    s = tl.math.div_rn(1.0, den)
    act = tl.math.div_rn(g, den).to(DX.dtype.element_ty).to(tl.float32)
    dg = o * u * s * (1.0 + g * (1.0 - s))
    tl.store(DX + row * 2 * I + cols, dg.to(DX.dtype.element_ty), mask=mask)
    tl.store(DX + row * 2 * I + I + cols, (o * act).to(DX.dtype.element_ty), mask=mask)


def _forward(x2: torch.Tensor) -> torch.Tensor:
    R, I = x2.shape[0], x2.shape[1] // 2
    out = torch.empty((R, I), dtype=x2.dtype, device=x2.device)
    if R == 0 or I == 0:
        return out
    if x2.is_cuda:
        _fwd_kernel[(R, triton.cdiv(I, _BLOCK))](x2, out, I, BLOCK=_BLOCK, num_warps=4)
    else:
        from ._cpu_build import load_cpu_ops
        load_cpu_ops("rows").rows_silu_and_mul_fwd(x2, out)
    return out


class _SiluAndMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2):
        ctx.save_for_backward(x2)
        return _forward(x2)

    @staticmethod
    def backward(ctx, go):
        (x2,) = ctx.saved_tensors
        R, I = x2.shape[0], x2.shape[1] // 2
        dx = torch.empty_like(x2)
        if R == 0 or I == 0:
            return dx
        go = _canonical(go.to(x2.dtype))
        if x2.is_cuda:
            _bwd_kernel[(R, triton.cdiv(I, _BLOCK))](go, x2, dx, I, BLOCK=_BLOCK, num_warps=4)
        else:
            from ._cpu_build import load_cpu_ops
            load_cpu_ops("rows").rows_silu_and_mul_bwd(go, x2, dx)
        return dx


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> [..., I] in x.dtype: silu(x[..., :I]) * x[..., I:] (rounding
    points in the module docstring). Differentiable."""
    check_float(_OP, "x", x)
    check_same_device(_OP, x=x)
    check(x.dim() >= 1 and x.shape[-1] % 2 == 0, _OP, f"expected x [..., 2I] with an even last dim; got {shapes(x=x)}")
    shape = x.shape
    x2 = _canonical(x.reshape(-1, shape[-1]))
    out = _SiluAndMul.apply(x2) if torch.is_grad_enabled() and x.requires_grad else _forward(x2)
    return out.reshape(*shape[:-1], shape[-1] // 2)
