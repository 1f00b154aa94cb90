"""Plain fp32 PyTorch references for every op in the library.

These define the math. They are used only by the closeness tests (with stated
tolerances), never by the product: they call torch's own kernels, whose reduction
order depends on the batch. Inputs are upcast to fp32; outputs are fp32.

Shapes: T = tokens (rows), H = hidden, V = vocab, Hq/Hkv = query/key-value heads,
D = head_dim, B = sequences.
"""
from __future__ import annotations

import torch


def mm_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[M, K] @ [K, N] -> [M, N]."""
    return a.float() @ b.float()


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """[..., K] @ [N, K]^T + [N] -> [..., N]."""
    y = x.float() @ weight.float().t()
    return y if bias is None else y + bias.float()


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face Qwen3RMSNorm: variance in fp32, eps inside rsqrt, the normalised
    value cast back to x.dtype, then multiplied by the weight. [..., H] -> [..., H]."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight.float() * y.to(x.dtype).float()


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> [..., I]: silu(x[..., :I]) * x[..., I:]."""
    gate, up = x.float().chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rotary_table_ref(max_positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary table: cos, sin of shape [max_positions, head_dim // 2], fp32,
    built as Hugging Face builds it (inv_freq = 1 / theta ** (2i / D), fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.int64).float(), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rotary_ref(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], positions [T] -> [T, heads, D] (neox: rotate halves)."""
    c = cos[positions].unsqueeze(1)
    s = sin[positions].unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def log_softmax_ref(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[T, V] -> [T, V] fp32: log_softmax(logits.float() / temperature)."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def token_logprobs_ref(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[T, V], [T] -> [T] fp32."""
    return log_softmax_ref(logits, temperature).gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)


def row_mean_ref(x: torch.Tensor) -> torch.Tensor:
    """[R, N] -> [R] fp32."""
    return x.float().mean(-1)


def varlen_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         scale: float, causal: bool = True) -> torch.Tensor:
    """Packed sequences. q [T, Hq, D], k/v [T, Hkv, D], cu_seqlens [B+1] -> [T, Hq, D] fp32."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    group = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        qs = q[s:e].float().transpose(0, 1)
        ks = k[s:e].float().repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[s:e].float().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = (qs @ ks.transpose(1, 2)) * scale
        if causal:
            n = e - s
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
        out[s:e] = (torch.softmax(scores, dim=-1) @ vs).transpose(0, 1)
    return out


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                        cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries are the last q_len tokens of each sequence; keys come from the cache.

    q [Tq, Hq, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D]; block_table [B, max_blocks];
    cu_seqlens_q [B+1]; seq_lens [B] (context length including the new tokens) -> [Tq, Hq, D] fp32.
    """
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    bs = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    cq = cu_seqlens_q.tolist()
    for b, (s, e) in enumerate(zip(cq[:-1], cq[1:])):
        n = int(seq_lens[b])
        nblk = (n + bs - 1) // bs
        blocks = block_table[b, :nblk].long()
        ks = k_cache[blocks].reshape(-1, *k_cache.shape[2:])[:n].float().repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v_cache[blocks].reshape(-1, *v_cache.shape[2:])[:n].float().repeat_interleave(group, dim=1).transpose(0, 1)
        qs = q[s:e].float().transpose(0, 1)
        scores = (qs @ ks.transpose(1, 2)) * scale
        qpos = torch.arange(n - (e - s), n, device=q.device)
        mask = torch.arange(n, device=q.device)[None, :] <= qpos[:, None]
        scores = scores.masked_fill(~mask, float("-inf"))
        out[s:e] = (torch.softmax(scores, dim=-1) @ vs).transpose(0, 1)
    return out
