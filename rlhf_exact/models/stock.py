"""Stock torch ops with the signatures of the kernel-library ops the model calls, for
`kernels=default` runs and the model benchmark: F.linear (cuBLAS / oneDNN), F.rms_norm,
rotary in torch elementwise math, per-sequence SDPA (causal, GQA), F.silu * up,
log_softmax + gather. The module code, shapes and parameters stay the same, so a
comparison isolates the kernels. These are batch-VARIANT (that is the point of the
comparison): never use them where exact logprobs are claimed.

    from rlhf_exact.models.stock import stock_ops, use_stock_ops
    with stock_ops(): ...        # scoped (benchmarks)
    use_stock_ops()              # for the rest of the process (a kernels=default trainer rank)
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from . import qwen3


def _rms_norm(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _silu_and_mul(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def _apply_rotary(x, positions, cos, sin):
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def _varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale):
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None],
                                           v[a:b].transpose(0, 1)[None], is_causal=True, scale=scale,
                                           enable_gqa=True)
        out[a:b] = o[0].transpose(0, 1)
    return out


def token_logprobs(logits, token_ids, temperature=1.0):
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, token_ids[:, None]).squeeze(-1)


def log_softmax(logits, temperature=1.0):
    return torch.log_softmax(logits.float() / temperature, dim=-1)


STOCK = {"linear": F.linear, "rms_norm": _rms_norm, "silu_and_mul": _silu_and_mul,
         "apply_rotary": _apply_rotary, "varlen_attention": _varlen_attention, "token_logprobs": token_logprobs}


@contextlib.contextmanager
def stock_ops():
    saved = {name: getattr(qwen3, name) for name in STOCK}
    use_stock_ops()
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(qwen3, name, fn)


def use_stock_ops() -> None:
    """Swap the op names in rlhf_exact.models.qwen3 for the stock ones, process-wide."""
    for name, fn in STOCK.items():
        setattr(qwen3, name, fn)
