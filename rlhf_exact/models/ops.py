"""The model's op table: which kernels compute each op of `qwen3.py` (linear, RMSNorm,
silu-and-mul, rotary, varlen attention, token logprobs, log-softmax).

    from rlhf_exact.models.ops import select_kernels
    ops = select_kernels("exact")         # once per process, before any process group
    model, _ = load_model(path, ops=ops)  # or Qwen3ForCausalLM(config, ops=ops)

Two tables. `EXACT`: the batch-invariant kernel library (`exact_kernels`), the only
one the numerics contract (docs/design.md) is claimed for. `STOCK`: stock torch
(cuBLAS / oneDNN linear, F.rms_norm, rotary in torch elementwise math, per-sequence
SDPA, F.silu * up, log_softmax + gather), for `kernels=default` runs (the comparison
that shows what the exact kernels remove) and the model benchmark. These are
batch-VARIANT, which is the point of the comparison: never use them where exact
logprobs are claimed. The table is chosen per model instance,
never by rebinding module globals, so an exact and a stock model can live in one
process. The paged path (`write_kv_cache`, `paged_attention`) and the rotary table have
exact implementations only: generation with stock kernels is stock vLLM's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from exact_kernels.activation import silu_and_mul
from exact_kernels.attention import varlen_attention
from exact_kernels.logprobs import log_softmax, token_logprobs
from exact_kernels.matmul import linear
from exact_kernels.rms_norm import rms_norm
from exact_kernels.rotary import apply_rotary


@dataclasses.dataclass(frozen=True)
class Ops:
    """One implementation of every op the model calls, with the kernel library's signatures."""

    kind: str  # "exact" | "default"
    linear: Callable  # (x [..., in], weight [out, in], bias None) -> [..., out]
    rms_norm: Callable  # (x [..., H], weight [H], eps) -> [..., H]
    silu_and_mul: Callable  # (x [..., 2I]) -> [..., I]: silu(gate) * up
    apply_rotary: Callable  # (x [T, heads, D], positions [T], cos, sin [P, D/2]) -> [T, heads, D]
    varlen_attention: Callable  # (q, k, v, cu_seqlens, max_seqlen, scale) -> [T, heads, D], causal
    token_logprobs: Callable  # (logits [R, V], targets [R], temperature) -> [R] fp32
    log_softmax: Callable  # (logits [R, V], temperature) -> [R, V] fp32


EXACT = Ops("exact", linear=linear, rms_norm=rms_norm, silu_and_mul=silu_and_mul, apply_rotary=apply_rotary,
            varlen_attention=varlen_attention, token_logprobs=token_logprobs, log_softmax=log_softmax)



def _stock_rms_norm(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _stock_silu_and_mul(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def _stock_apply_rotary(x, positions, cos, sin):
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def _stock_varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale):
    """Stock causal attention over packed sequences. On CUDA: FlashAttention-2's varlen
    kernel (the one a stock trainer uses; grouped KV heads natively), with its autograd
    formula; elsewhere SDPA once per sequence."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_seqlen, max_seqlen, 0.0, True, False,
                                                        scale=scale)[0]
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None],
                                           v[a:b].transpose(0, 1)[None], is_causal=True, scale=scale,
                                           enable_gqa=True)
        out[a:b] = o[0].transpose(0, 1)
    return out


def _stock_log_softmax(logits, temperature=1.0):
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _stock_token_logprobs(logits, token_ids, temperature=1.0):
    return _stock_log_softmax(logits, temperature).gather(-1, token_ids[:, None]).squeeze(-1)


STOCK = Ops("default", linear=F.linear, rms_norm=_stock_rms_norm, silu_and_mul=_stock_silu_and_mul,
            apply_rotary=_stock_apply_rotary, varlen_attention=_stock_varlen_attention,
            token_logprobs=_stock_token_logprobs, log_softmax=_stock_log_softmax)

KINDS = {"exact": EXACT, "default": STOCK}


def select_kernels(kind: str) -> Ops:
    """The process's kernel choice (config key `kernels`): returns the op table to build
    models with. "exact" also runs the exact-mode switch (`exact_kernels.enable_exact_mode`:
    aten routing, TF32 off, NCCL variables, which NCCL reads at `init_process_group`, so
    call this first). Idempotent."""
    if kind not in KINDS:
        raise ValueError(f"kernels must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "exact":
        from exact_kernels import enable_exact_mode

        enable_exact_mode()
    return KINDS[kind]
