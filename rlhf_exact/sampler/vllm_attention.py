"""The exact attention backend for vLLM (0.26 to 0.32; the differences between those
releases are in vllm_compat.py): metadata from vLLM's backend-independent
`CommonAttentionMetadata`, K/V written to the cache before attention reads it, and the
kernel library's `paged_attention` (batch invariant; bitwise equal to the trainer's
`varlen_attention` per query row, see kernels/attention.py).

How it is wired (no fork): `vllm_plugin.register()` points an attention backend enum
member (`EXACT_ATTN` on 0.32, `CUSTOM` on 0.26) at `ExactAttentionBackend`, and the exact
model (`vllm_model.py`) builds its `Attention` layers with
`attn_backend=ExactAttentionBackend`, which skips vLLM's platform selector (the CPU
platform would otherwise always pick CPU_ATTN, whose scheduler metadata and optional
KV split depend on the batch). vLLM then allocates one KV tensor per layer from our
declared layout and binds it to `Attention.kv_cache`, and builds our metadata once per
step with `ExactMetadataBuilder`.

KV cache layout. Every layer's cache is the logical 4D view [num_blocks, Hkv,
block_size, 2 * D] (K in the first D channels, V in the last D). We ask for physical
[num_blocks, block_size, Hkv, 2D] (the flash layout the kernels were written for; 0.32
may also give the identity layout), declared per release by `KVLayoutMixin`
(vllm_compat.py). `kv_cache_views` returns K and V as strided views
[num_blocks, block_size, Hkv, D] of that one tensor, whatever the layout, with the head
dim contiguous, which is all `write_kv_cache` and `paged_attention` need: no copy.

Who calls what. The exact model runs attention through its own module code
(`Qwen3Attention` with a `PagedContext` built by `paged_context`): the same
`write_kv_cache` then `paged_attention` calls as the project's paged generator, on the
views above. `ExactAttentionImpl` does the same two calls for anything that goes
through vLLM's `Attention.forward` (vLLM calls `do_kv_cache_update` before `forward`
because `forward_includes_kv_cache_update` is False), so the backend is complete on its
own; the two paths are one function each (`_write`, `_attend`).

Host syncs and CUDA graphs. The builder validates the step's metadata once, on the
host copies vLLM already has, and hands the kernels `max_q_len`: the per-layer kernels
then read nothing back (kernels/attention.py), and the builder declares
`UNIFORM_SINGLE_TOKEN_DECODE` CUDA-graph support, so with
`compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}` vLLM captures
whole decode steps (prefill and mixed steps run eagerly). With mixed graphs
(`additional_config["rlhf_exact"]["mixed_graphs"]`, engine.py `cuda_graphs="mixed"`) it
declares ALWAYS and vLLM (`cudagraph_mode: "FULL"`) captures every step of up to
`max_cudagraph_capture_size` tokens, whatever its mix: the attention grid then runs over
a tile list (`paged_tiles`) that the builder writes into one buffer of its own each
step, so the grid depends on the padded step size alone, not on the query lengths that
a captured launch would otherwise keep. How vLLM 0.26 captures and replays such steps
(its V2 model runner, padding, the persistent buffers): docs/notes_vllm_full_graphs.md. The metadata's tensors are
vLLM's persistent buffers themselves (no dtype conversion copies), which a replayed
graph requires. Padded requests of a captured batch have zero-length queries and
slot -1: nothing is written for them and their rows are discarded by vLLM.

Not supported (rejected at construction): alibi, sliding window, logits soft-cap,
non-decoder attention, quantized KV caches.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from exact_kernels.attention import SUPPORTED_HEAD_DIMS, paged_attention, paged_tile_rows, paged_tiles, write_kv_cache

from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

from .vllm_compat import BACKEND_NAME, KVLayoutMixin


@dataclasses.dataclass
class ExactAttentionMetadata:
    """One step's batch, in the dtypes the kernels take (shared by every layer)."""

    num_tokens: int  # real (unpadded) new tokens in the step
    cu_seqlens_q: torch.Tensor  # [B+1] int32, boundaries of each request's new tokens
    seq_lens: torch.Tensor  # [B] int32, context length including the new tokens
    block_table: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot of each new token
    max_q_len: int  # longest new-token count of a request (sizes the kernel grid)
    tiles: torch.Tensor | None = None  # the attention's tile list (mixed-step graphs), or None: grid by max_q_len


def mixed_graphs(vllm_config) -> bool:
    """Whether the engine replays mixed prefill/decode steps from CUDA graphs too
    (`additional_config["rlhf_exact"]["mixed_graphs"]`, set by engine.py for
    cuda_graphs="mixed")."""
    extra = (getattr(vllm_config, "additional_config", None) or {}).get("rlhf_exact", {}) or {}
    return bool(extra.get("mixed_graphs", False))


def _same_or_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t itself when it already has `dtype` (vLLM's buffers do: a captured CUDA graph
    must see the same storage at replay), else a converted copy."""
    return t if t.dtype == dtype else t.to(dtype)


class ExactMetadataBuilder(AttentionMetadataBuilder[ExactAttentionMetadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        """ALWAYS with mixed graphs (the attention grid then runs over the tile list,
        fixed by the step's padded size), else uniform single-token decode batches."""
        return AttentionCGSupport.ALWAYS if mixed_graphs(vllm_config) else cls._cudagraph_support

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        # Mixed graphs, CUDA: one tile list for every step, at a fixed address (a replayed
        # graph reads it), filled in place by build(). Capacity: every step's tiles, since
        # sum(ceil(q_b / tok_m)) <= T // tok_m + (requests), T <= max_num_batched_tokens.
        self._tiles = None
        if mixed_graphs(vllm_config) and torch.device(device).type == "cuda":
            heads = vllm_config.model_config.hf_config.num_attention_heads
            self._tok_m = paged_tile_rows(vllm_config.model_config.dtype, heads, kv_cache_spec.num_kv_heads,
                                          kv_cache_spec.head_size)
            sched = vllm_config.scheduler_config
            self._tiles = torch.full((sched.max_num_batched_tokens // self._tok_m + sched.max_num_seqs,), -1,
                                     dtype=torch.int32, device=device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> ExactAttentionMetadata:
        # common_prefix_len is ignored on purpose: a cascade (shared-prefix) path would
        # merge partial softmaxes in an order prefill does not share.
        c = common_attn_metadata
        b = c.num_reqs
        # num_actual_tokens may include padding; the real count is the last boundary.
        # The query boundaries are checked here, once per step, on vLLM's host copy; the
        # rest (seq_lens >= q_len, block ids) is vLLM's scheduler's own invariant, which
        # every vLLM backend trusts. The kernels then do no host reads (module docstring).
        cu_cpu = c.query_start_loc_cpu[: b + 1]
        q_lens = cu_cpu[1:] - cu_cpu[:-1]
        if b and (int(cu_cpu[0]) != 0 or bool((q_lens < 0).any())):
            raise ValueError(f"exact attention: query_start_loc must rise from 0, got {cu_cpu.tolist()[:8]}")
        n = int(cu_cpu[b])
        tiles = None
        if self._tiles is not None:
            # Everything a captured launch keeps depends on (T, b) alone: vLLM pads a
            # replayed step to the size it was captured at (T tokens, b requests; the
            # padding belongs to no request, its slots are -1), and the grid is the
            # list's length. The real step's tiles come first, then -1.
            n = c.num_actual_tokens
            tiles = paged_tiles(q_lens, self._tok_m, self._tiles[: n // self._tok_m + min(b, n)])
        return ExactAttentionMetadata(
            num_tokens=n,
            cu_seqlens_q=_same_or_cast(c.query_start_loc[: b + 1], torch.int32),
            seq_lens=_same_or_cast(c.seq_lens[:b], torch.int32),
            block_table=_same_or_cast(c.block_table_tensor[:b], torch.int32),
            slot_mapping=_same_or_cast(c.slot_mapping[:n], torch.int64),
            max_q_len=max(int(q_lens.max()) if b else 0, 1),
            tiles=tiles,
        )


def kv_cache_views(kv_cache: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's per-layer cache [num_blocks, Hkv, block_size, 2 * D] (any strides) ->
    (K, V), each a view [num_blocks, block_size, Hkv, D] with the last dim contiguous."""
    if kv_cache.dim() != 4 or kv_cache.shape[-1] != 2 * head_dim:
        raise ValueError(f"exact attention: expected a KV cache [num_blocks, Hkv, block_size, {2 * head_dim}], "
                         f"got {tuple(kv_cache.shape)}")
    k = kv_cache[..., :head_dim].transpose(1, 2)
    v = kv_cache[..., head_dim:].transpose(1, 2)
    return k, v


def _write(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
           head_dim: int) -> None:
    k_cache, v_cache = kv_cache_views(kv_cache, head_dim)
    n = slot_mapping.shape[0]
    write_kv_cache(key[:n], value[:n], k_cache, v_cache, slot_mapping, check_slots=False)


def _attend(query: torch.Tensor, kv_cache: torch.Tensor, md: ExactAttentionMetadata, scale: float,
            head_dim: int) -> torch.Tensor:
    k_cache, v_cache = kv_cache_views(kv_cache, head_dim)
    return paged_attention(query[: md.num_tokens], k_cache, v_cache, md.block_table, md.cu_seqlens_q,
                           md.seq_lens, scale, max_q_len=md.max_q_len, tiles=md.tiles)


class ExactAttentionImpl(AttentionImpl[ExactAttentionMetadata]):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int | None = None,
                 alibi_slopes=None, sliding_window=None, kv_cache_dtype: str = "auto",
                 logits_soft_cap=None, attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, **extra) -> None:
        unsupported = [name for name, bad in (
            ("alibi", alibi_slopes is not None), ("sliding window", sliding_window is not None),
            ("logits soft-cap", bool(logits_soft_cap)), (f"attn_type={attn_type}", attn_type != AttentionType.DECODER),
            (f"kv_cache_dtype={kv_cache_dtype}", kv_cache_dtype != "auto")) if bad]
        if unsupported:
            raise ValueError(f"exact attention does not support: {', '.join(unsupported)}")
        if head_size not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"exact attention: head_size {head_size} unsupported (supported: {SUPPORTED_HEAD_DIMS})")
        self.num_heads, self.head_size, self.scale = num_heads, head_size, float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def do_kv_cache_update(self, layer, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
        """key/value [T, Hkv, D] -> the cache, before `forward` reads it."""
        if self.kv_sharing_target_layer_name is None:
            _write(key, value, kv_cache, slot_mapping, self.head_size)

    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: ExactAttentionMetadata | None, output: torch.Tensor | None = None,
                output_scale=None, output_block_scale=None) -> torch.Tensor:
        """query [T, Hq, D] -> output [T, Hq, D]; attn_metadata None is vLLM's profiling run."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("exact attention: fused output quantization is not supported")
        if attn_metadata is None:
            return output
        out = _attend(query, kv_cache, attn_metadata, self.scale, self.head_size)
        output[: attn_metadata.num_tokens].copy_(out.view(output[: attn_metadata.num_tokens].shape))
        return output


class ExactAttentionBackend(KVLayoutMixin, AttentionBackend):
    forward_includes_kv_cache_update: bool = False  # vLLM calls do_kv_cache_update first
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto"]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[ExactAttentionImpl]:
        return ExactAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[ExactMetadataBuilder]:
        return ExactMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list:
        # The kernels take any page size; 16 keeps vLLM's block arithmetic simple.
        return [MultipleOf(16)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_DIMS)

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER
