"""Qwen3 dense (0.6B to 32B configurations) on the batch-invariant kernel library.

One definition, two attention contexts, same op boundaries and rounding points:

- `VarlenContext`: packed causal sequences (the trainer; also the sampler's prompt
  prefill when run without a cache), `exact_kernels.varlen_attention`;
- `PagedContext`: per-layer paged KV caches (generation), K/V written to the cache
  with `write_kv_cache` before `paged_attention` reads them.

Inputs are PACKED token streams with no batch dimension ([T] token ids, [T]
positions), the layout vLLM uses. Parameter names are those of Hugging Face's
`Qwen3ForCausalLM` state dict, so checkpoints load and save directly
(`rlhf_exact.models.hf_io`). Compute goes only through the op table (models/ops.py:
`exact_kernels` by default; linear, rms_norm, silu_and_mul, apply_rotary, attention,
token_logprobs) and the exact paged attention; torch does data
movement, the embedding lookup and the residual adds (elementwise, so batch
invariant). The model imports no Ray, vLLM or W&B.

Rounding points with bf16 parameters (each a cast to bf16 unless stated), against HF:

  1. embedding lookup: exact (a gather).
  2. input_layernorm / post_attention_layernorm / model.norm / q_norm / k_norm:
     fp32 variance and normalisation, rounded to bf16, then times the bf16 weight,
     rounded to bf16: the same two roundings as HF's Qwen3RMSNorm.
  3. q/k/v/o, gate/up/down, lm_head linears: fp32 accumulation, one rounding of the
     output (as cuBLAS/HF; the accumulation order is ours, fixed per shape).
  4. rotary: DEPARTS from HF. HF rounds cos/sin to bf16 and rounds q*cos,
     rotate_half(q)*sin and their sum (three roundings in bf16). Here the fp32 table
     (built once with `rotary_table`, never cast, also under FSDP2 mixed precision)
     is applied in fp32 and the result rounded once. Reason: the sampler and the
     trainer must build and apply the table the same way; fp32 is the one choice
     that does not depend on the parameter dtype.
  5. attention: fp32 scores, softmax and PV accumulation, one rounding of the output
     (HF eager rounds the probabilities to bf16 first; SDPA varies by backend).
  6. residual adds: bf16 + bf16 rounded to bf16 (as HF).
  7. MLP: gate and up are separate linears (each rounded to bf16, as HF), concatenated
     and passed to `silu_and_mul`, which computes silu(gate) * up in fp32 and rounds
     once. DEPARTS from HF, which rounds silu(gate) to bf16 before the product.
  8. logits: bf16 (as HF); logprobs = log_softmax(logits.float() / T) in fp32 by
     `token_logprobs`, the one logprob function of the project.
With fp32 parameters every step is fp32 and the model matches HF to ~1e-5.

Not supported (rejected at config time): attention biases, sliding window, rope
scaling, activations other than silu. `padding_idx` of HF's embedding (zero gradient
for the pad row) is not reproduced: it does not affect the forward.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# Imported from the op modules, not the package: once `exact_kernels.rms_norm` (the
# module) is imported, the package attribute `rms_norm` is that module, not the op.
from exact_kernels.attention import paged_attention, write_kv_cache
from exact_kernels.rotary import rotary_table

from .ops import EXACT, Ops

ARCHITECTURE = "Qwen3ForCausalLM"
MODEL_TYPE = "qwen3"


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """The Qwen3 dense hyper-parameters we use; field names are HF's config.json keys."""

    vocab_size: int  # rows of the embedding (and of lm_head); may exceed the tokenizer's vocabulary
    hidden_size: int  # model width H
    intermediate_size: int  # MLP width I
    num_hidden_layers: int  # decoder layers
    num_attention_heads: int  # query heads Hq
    num_key_value_heads: int  # key/value heads Hkv; Hq % Hkv == 0 (GQA)
    head_dim: int  # D, even (rotary rotates halves); vLLM's CPU attention needs >= 32
    rms_norm_eps: float = 1e-6  # inside the rsqrt of every RMSNorm
    rope_theta: float = 1_000_000.0  # rotary base
    max_position_embeddings: int = 40960  # rows of the rotary table
    tie_word_embeddings: bool = False  # lm_head.weight is model.embed_tokens.weight
    bos_token_id: int | None = None  # carried through to config.json
    eos_token_id: int | list[int] | None = None  # carried through to config.json
    pad_token_id: int | None = None  # carried through to config.json

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Qwen3Config.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"Qwen3Config: num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"Qwen3Config.head_dim must be even (rotary rotates halves), got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"Qwen3Config.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"Qwen3Config.rope_theta must be > 0, got {self.rope_theta}")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json",
                     architecture: str = ARCHITECTURE) -> Qwen3Config:
        """Read a Hugging Face config.json dict of `architecture` (Qwen3ForCausalLM, or
        Qwen3ForSequenceClassification for a reward model); ValueError naming `source` for
        another architecture or a Qwen3 feature this model does not implement."""
        archs = d.get("architectures") or []
        if d.get("model_type") != MODEL_TYPE or (archs and archs != [architecture]):
            raise ValueError(f"{source}: model_type={d.get('model_type')!r}, architectures={archs!r}; "
                             f"expected model_type='qwen3' with {architecture}")
        unsupported = []
        if d.get("attention_bias"):
            unsupported.append("attention_bias=true")
        if d.get("use_sliding_window"):
            unsupported.append("use_sliding_window=true")
        if d.get("hidden_act", "silu") != "silu":
            unsupported.append(f"hidden_act={d['hidden_act']!r}")
        rope = d.get("rope_parameters") or {}
        if d.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            unsupported.append(f"rope scaling {d.get('rope_scaling') or rope}")
        if unsupported:
            raise ValueError(f"{source}: unsupported Qwen3 setting(s): {', '.join(unsupported)}")
        theta = rope.get("rope_theta", d.get("rope_theta", 1_000_000.0))
        try:
            return cls(
                vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
                max_position_embeddings=d.get("max_position_embeddings", 40960),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"),
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing key {e.args[0]!r}") from None
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def to_hf_dict(self, dtype: torch.dtype = torch.bfloat16, architecture: str = ARCHITECTURE) -> dict[str, Any]:
        """A config.json dict that transformers' `architecture` class (and, for
        Qwen3ForCausalLM, vLLM) loads."""
        return {
            "architectures": [architecture],
            "model_type": MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": str(dtype).removeprefix("torch."),
        }

    def to_json(self, dtype: torch.dtype = torch.bfloat16, architecture: str = ARCHITECTURE,
                extra: dict[str, Any] | None = None) -> str:
        """config.json text; `extra` keys (a reward model's labels) are added."""
        return json.dumps(self.to_hf_dict(dtype, architecture) | (extra or {}), indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------------------------------------
# Attention contexts


@dataclasses.dataclass
class VarlenContext:
    """Packed causal sequences (training, cache-free prefill)."""

    cu_seqlens: torch.Tensor  # [B+1] int32, sequence boundaries in the packed stream
    max_seqlen: int  # longest sequence


@dataclasses.dataclass
class PagedContext:
    """One step of paged generation: the new tokens of B sequences, packed."""

    kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each [num_blocks, block_size, Hkv, D]
    block_table: torch.Tensor  # [B, max_blocks] int32
    cu_seqlens_q: torch.Tensor  # [B+1] int32, boundaries of the new tokens
    seq_lens: torch.Tensor  # [B] int32, context length including the new tokens
    slot_mapping: torch.Tensor  # [T] int64, cache slot (block * block_size + offset) of each new token
    # The longest q_len, given by a caller that validated the metadata itself (vLLM's
    # metadata builder, once per step): the kernels then read nothing back to the host,
    # so a decode step can be captured in a CUDA graph. None: the kernels validate.
    max_q_len: int | None = None
    # With max_q_len, on CUDA: the attention grid runs over this tile list
    # (exact_kernels.attention.paged_tiles) so its size is fixed by the list's capacity,
    # the form a CUDA graph of mixed prefill/decode steps needs. Same bits either way.
    tiles: torch.Tensor | None = None


AttentionContext = VarlenContext | PagedContext


# ----------------------------------------------------------------------------------------------
# Modules (names and shapes follow HF's Qwen3ForCausalLM)


class Linear(nn.Module):
    """Bias-free linear on `ops.linear` (`exact_kernels.matmul.linear`): [..., in] -> [..., out]."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None, ops: Ops = EXACT):
        super().__init__()
        self.in_features, self.out_features, self.ops = in_features, out_features, ops
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight, None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


class RMSNorm(nn.Module):
    """HF Qwen3RMSNorm on `ops.rms_norm` (rounding point 2): [..., H] -> [..., H]."""

    def __init__(self, hidden_size: int, eps: float, device=None, dtype=None, ops: Ops = EXACT):
        super().__init__()
        self.eps, self.ops = eps, ops
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class RotaryTable(nn.Module):
    """The fp32 rotary table (cos, sin [max_positions, D/2]): non-persistent buffers,
    built with `exact_kernels.rotary_table`.

    Any `module.to(...)`, `.to_empty(...)`, `.bfloat16()` rebuilds the table in fp32 on
    the buffers' new device instead of casting it, so the table is the same whatever
    the parameter dtype and however the model was materialised (meta init, FSDP2)."""

    def __init__(self, max_positions: int, head_dim: int, theta: float, device=None):
        super().__init__()
        self.max_positions, self.head_dim, self.theta = max_positions, head_dim, theta
        device = torch.device(device) if device is not None else torch.device("cpu")
        cos, sin = self._build(device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _build(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "meta":
            shape = (self.max_positions, self.head_dim // 2)
            return (torch.empty(shape, device=device, dtype=torch.float32),) * 2
        return rotary_table(self.max_positions, self.head_dim, self.theta, device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.cos, self.sin = self._build(self.cos.device)
        return self


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int, device=None, dtype=None, ops: Ops = EXACT):
        super().__init__()
        self.layer_idx, self.ops = layer_idx, ops
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim ** -0.5
        h, qd, kvd = config.hidden_size, config.num_attention_heads * config.head_dim, \
            config.num_key_value_heads * config.head_dim
        kw = dict(device=device, dtype=dtype, ops=ops)
        self.q_proj = Linear(h, qd, **kw)
        self.k_proj = Linear(h, kvd, **kw)
        self.v_proj = Linear(h, kvd, **kw)
        self.o_proj = Linear(qd, h, **kw)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, **kw)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, **kw)
        self.qkv_weight: torch.Tensor | None = None  # fuse_projections(): [qd + 2 kvd, H], q/k/v are its rows

    def fuse_projections(self) -> None:
        """One linear for q, k and v (module docstring of fuse_projections on the model)."""
        self.qkv_weight = _fuse_rows(self.q_proj, self.k_proj, self.v_proj)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                ctx: AttentionContext) -> torch.Tensor:
        """x [T, H], positions [T] -> [T, H]."""
        t = x.shape[0]
        if self.qkv_weight is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # column slices of one product: the same bits (an element's sum depends on K only)
            q, k, v = self.ops.linear(x, self.qkv_weight, None).split(
                [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features], dim=-1)
            if isinstance(ctx, VarlenContext):
                v = v.contiguous()
        q = self.q_norm(q.view(t, self.num_heads, self.head_dim))
        k = self.k_norm(k.view(t, self.num_kv_heads, self.head_dim))
        v = v.view(t, self.num_kv_heads, self.head_dim)
        q = self.ops.apply_rotary(q, positions, cos, sin)
        k = self.ops.apply_rotary(k, positions, cos, sin)
        if isinstance(ctx, VarlenContext):
            o = self.ops.varlen_attention(q, k, v, ctx.cu_seqlens, ctx.max_seqlen, self.scale)
        else:
            k_cache, v_cache = ctx.kv_caches[self.layer_idx]
            # written before it is read
            write_kv_cache(k, v, k_cache, v_cache, ctx.slot_mapping, check_slots=ctx.max_q_len is None)
            o = paged_attention(q, k_cache, v_cache, ctx.block_table, ctx.cu_seqlens_q, ctx.seq_lens,
                                self.scale, max_q_len=ctx.max_q_len, tiles=ctx.tiles)
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))


class Qwen3MLP(nn.Module):
    def __init__(self, config: Qwen3Config, device=None, dtype=None, ops: Ops = EXACT):
        super().__init__()
        self.ops = ops
        kw = dict(device=device, dtype=dtype, ops=ops)
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, **kw)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, **kw)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, **kw)
        self.gate_up_weight: torch.Tensor | None = None  # fuse_projections(): [2 I, H], gate/up are its rows

    def fuse_projections(self) -> None:
        self.gate_up_weight = _fuse_rows(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Gate and up rounded as HF's separate linears, one fused silu*mul (rounding point 7).
        if self.gate_up_weight is None:
            gate_up = torch.cat([self.gate_proj(x), self.up_proj(x)], dim=-1)
        else:  # one product: [gate | up] already side by side, the same bits as the cat
            gate_up = self.ops.linear(x, self.gate_up_weight, None)
        return self.down_proj(self.ops.silu_and_mul(gate_up))


def _fuse_rows(*linears: Linear) -> torch.Tensor:
    """One [sum of out_features, in] tensor holding the linears' weights as row blocks;
    each linear's weight becomes a Parameter viewing its block (same storage), so a copy
    into a weight by name (checkpoint load, weight update) updates the fused tensor."""
    fused = torch.cat([m.weight.detach() for m in linears])
    start = 0
    for m in linears:
        m.weight = nn.Parameter(fused[start:start + m.out_features], requires_grad=m.weight.requires_grad)
        start += m.out_features
    return fused


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int, device=None, dtype=None, ops: Ops = EXACT):
        super().__init__()
        kw = dict(device=device, dtype=dtype, ops=ops)
        self.self_attn = Qwen3Attention(config, layer_idx, **kw)
        self.mlp = Qwen3MLP(config, **kw)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                ctx: AttentionContext) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, cos, sin, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    def __init__(self, config: Qwen3Config, device=None, dtype=None, ops: Ops = EXACT):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i, **kw, ops=ops)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw, ops=ops)
        self.rotary_emb = RotaryTable(config.max_position_embeddings, config.head_dim, config.rope_theta,
                                      device=device)
        self.activation_checkpointing = False

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """input_ids [T], positions [T] -> final-normed hidden states [T, H]."""
        x = F.embedding(input_ids, self.embed_tokens.weight)
        cos, sin = self.rotary_emb.cos, self.rotary_emb.sin
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and isinstance(ctx, VarlenContext)
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, positions, cos, sin, ctx, use_reentrant=False)
            else:
                x = layer(x, positions, cos, sin, ctx)
        return self.norm(x)


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 causal LM over packed token streams.

    `forward(input_ids [T], positions [T], ctx)` returns logits [R, V] (parameter
    dtype) of the rows `logits_indices` (all rows by default); with `targets` [R] it
    returns their fp32 logprobs [R] at `temperature` instead. Logits and logprobs are
    computed inside forward so FSDP2 keeps lm_head unsharded for them.

    `ops` is the op table every module computes with (models/ops.py): the exact kernels
    by default, stock torch for kernels=default runs."""

    def __init__(self, config: Qwen3Config, device=None, dtype=None, activation_checkpointing: bool = False,
                 ops: Ops = EXACT):
        super().__init__()
        self.config, self.ops = config, ops
        self.model = Qwen3Model(config, device=device, dtype=dtype, ops=ops)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, device=device, dtype=dtype, ops=ops)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.set_activation_checkpointing(activation_checkpointing)

    def fuse_projections(self) -> None:
        """Inference: q/k/v and gate/up each run as one linear over their weights stacked
        by rows, 4 matmul launches per layer instead of 7, and no concatenation before
        silu_and_mul. Every output element is the same bits as with separate linears: the
        batch-invariant matmul's sum for an element depends on K alone, not on N or the
        tile configuration (tests/kernels/test_matmul.py, tests/models/test_parity.py).
        The HF-named parameters stay, as views of the stacked tensors, so loading and
        weight updates by name work unchanged (`projections_fused` checks they still
        share storage). For the sampler: the trainer keeps separate parameters, which
        FSDP2 shards one by one."""
        for layer in self.model.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def projections_fused(self) -> bool:
        """True when every fused tensor still holds its linears' weights (no parameter
        was replaced by a new tensor since fuse_projections)."""
        def shares(fused, *linears):
            ptr = fused.data_ptr()
            for m in linears:
                if m.weight.data_ptr() != ptr:
                    return False
                ptr += m.weight.numel() * m.weight.element_size()
            return True
        return all(a.qkv_weight is not None and m.gate_up_weight is not None
                   and shares(a.qkv_weight, a.q_proj, a.k_proj, a.v_proj) and shares(m.gate_up_weight, m.gate_proj,
                                                                                     m.up_proj)
                   for a, m in ((layer.self_attn, layer.mlp) for layer in self.model.layers))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each decoder layer in backward (torch.utils.checkpoint, non-reentrant)."""
        self.model.activation_checkpointing = bool(enabled)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, seed: int = 0, std: float = 0.02, norm_noise: float = 0.0) -> None:
        """Seeded random init (HF's: normal(0, std) for linears and the embedding, ones
        for norms, plus optional `norm_noise` * normal so tests exercise every norm).
        Draws on a CPU generator in state-dict order, so the values do not depend on
        the device."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():  # a tied weight is listed once
            if name.endswith("norm.weight"):
                v = 1.0 + norm_noise * torch.randn(p.shape, generator=gen) if norm_noise else torch.ones(p.shape)
            else:
                v = torch.randn(p.shape, generator=gen) * std
            p.copy_(v.to(p.dtype))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext, *,
                logits_indices: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                temperature: float = 1.0) -> torch.Tensor:
        hidden = self.model(input_ids, positions, ctx)
        if logits_indices is not None:
            hidden = hidden[logits_indices]
            if hidden.shape[0] == 0:  # e.g. a generation step of mid-prompt chunks only
                if targets is None:
                    return hidden.new_empty(0, self.config.vocab_size)
                return hidden.new_empty(0, dtype=torch.float32)
        logits = self.lm_head(hidden)
        if targets is None:
            return logits
        return self.ops.token_logprobs(logits, targets, temperature)


# ----------------------------------------------------------------------------------------------
# Packed batches for the trainer-side forward


@dataclasses.dataclass
class PackedBatch:
    """Sequences packed into one token stream (no batch dimension)."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, restarting at 0 for every sequence
    cu_seqlens: torch.Tensor  # [B+1] int32
    max_seqlen: int
    targets: torch.Tensor  # [T] int64: the next token of the same sequence (0 where there is none)
    target_mask: torch.Tensor  # [T] bool: True where targets[t] is a real next token

    @property
    def context(self) -> VarlenContext:
        return VarlenContext(self.cu_seqlens, self.max_seqlen)

    def to(self, device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.positions.to(device), self.cu_seqlens.to(device),
                           self.max_seqlen, self.targets.to(device), self.target_mask.to(device))


def pack_sequences(sequences: Sequence[Sequence[int]], pad_id: int = 0, right_pad: int = 0,
                   pad_sequence: int = 0) -> PackedBatch:
    """Pack token lists into one causal stream.

    right_pad: pad tokens appended inside each sequence's segment (they come after the
      real tokens, so causal attention keeps them out of the real tokens' logprobs);
    pad_sequence: length of an extra all-padding sequence appended at the end.
    Padding rows have target_mask False."""
    ids, pos, tgt, mask, bounds = [], [], [], [], [0]
    segments = [(list(s), right_pad) for s in sequences]
    if pad_sequence:
        segments.append(([], pad_sequence))
    for toks, npad in segments:
        if not toks and not npad:
            raise ValueError("pack_sequences: empty sequence")
        n = len(toks) + npad
        ids += toks + [pad_id] * npad
        pos += range(n)
        tgt += toks[1:] + [0] * (npad + (1 if toks else 0))
        mask += [True] * max(len(toks) - 1, 0) + [False] * (npad + (1 if toks else 0))
        bounds.append(bounds[-1] + n)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.int64), positions=torch.tensor(pos, dtype=torch.int64),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        max_seqlen=max(b - a for a, b in zip(bounds[:-1], bounds[1:])),
        targets=torch.tensor(tgt, dtype=torch.int64), target_mask=torch.tensor(mask, dtype=torch.bool))


def packed_logprobs(model: nn.Module, batch: PackedBatch, temperature: float = 1.0) -> torch.Tensor:
    """Trainer-side logprobs: [T] fp32, logprob of batch.targets[t] given tokens <= t
    of the same sequence (meaningful where batch.target_mask). logits = linear(hidden,
    lm_head), then `token_logprobs(logits, targets, temperature)`."""
    return model(batch.input_ids, batch.positions, batch.context, targets=batch.targets, temperature=temperature)
