"""The sampler and the trainer call two entry points of one logprob function: the
sampler's `compute_logits` returns the full row `log_softmax(logits, T)` and vLLM
gathers the sampled token from it; the trainer calls `token_logprobs(logits, ids, T)`.
The parity chain needs them bitwise equal on the gathered entries, for any row, batch
and temperature. Also: the KV-cache views the backend hands to the kernels, and the
plugin's registration (idempotent, lazy)."""
import subprocess
import sys

import pytest
import torch

from exact_kernels.logprobs import log_softmax, token_logprobs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3, 0.05])
@pytest.mark.parametrize("rows,vocab", [(1, 512), (7, 151_936 // 64), (33, 1000), (5, 123)])
def test_log_softmax_gather_equals_token_logprobs(dtype, temperature, rows, vocab):
    gen = torch.Generator().manual_seed(rows * vocab)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    ids = torch.randint(0, vocab, (rows,), generator=gen)
    full = log_softmax(logits, temperature)
    assert full.dtype == torch.float32
    gathered = full.gather(1, ids[:, None]).squeeze(1)
    assert torch.equal(gathered, token_logprobs(logits, ids, temperature))
    # every column, not only sampled ones (prompt logprobs, top-k reporting)
    for t in (0, vocab - 1, vocab // 2):
        col = torch.full((rows,), t, dtype=torch.int64)
        assert torch.equal(full[:, t], token_logprobs(logits, col, temperature))


def test_log_softmax_rows_batch_invariant():
    logits = (torch.randn(40, 777, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    full = log_softmax(logits, 0.7)
    for i in (0, 13, 39):
        assert torch.equal(log_softmax(logits[i:i + 1], 0.7)[0], full[i])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(log_softmax(logits[perm], 0.7), full[perm])


@pytest.mark.parametrize("layout", ["LBNHC", "LBHNC"])
def test_kv_cache_views_are_strided_views_the_kernels_accept(layout):
    pytest.importorskip("vllm")
    from exact_kernels.attention import paged_attention, write_kv_cache
    from exact_kernels.reference import paged_attention_ref
    from rlhf_exact.sampler.vllm_attention import kv_cache_views

    nb, hkv, bs, d = 6, 2, 16, 32
    if layout == "LBNHC":  # physical [B, N, H, 2D], logical view [B, H, N, 2D]
        kv = torch.zeros(nb, bs, hkv, 2 * d, dtype=torch.bfloat16).transpose(1, 2)
    else:
        kv = torch.zeros(nb, hkv, bs, 2 * d, dtype=torch.bfloat16)
    k_cache, v_cache = kv_cache_views(kv, d)
    assert k_cache.shape == (nb, bs, hkv, d) and k_cache.data_ptr() == kv.data_ptr()
    gen = torch.Generator().manual_seed(0)
    n = 37
    k = torch.randn(n, hkv, d, generator=gen).to(torch.bfloat16)
    v = torch.randn(n, hkv, d, generator=gen).to(torch.bfloat16)
    blocks = torch.tensor([[4, 1, 5]], dtype=torch.int32)
    slots = (blocks[0].long()[torch.arange(n) // bs] * bs + torch.arange(n) % bs)
    write_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(kv[4, :, :, :d].transpose(0, 1), k[:bs])  # K in the first D channels
    assert torch.equal(kv[1, :, :, d:].transpose(0, 1), v[bs:2 * bs])  # V in the last D
    q = torch.randn(3, 4, d, generator=gen).to(torch.bfloat16)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    lens = torch.tensor([n], dtype=torch.int32)
    out = paged_attention(q, k_cache, v_cache, blocks, cu, lens, d ** -0.5)
    dense_k, dense_v = k_cache.contiguous(), v_cache.contiguous()
    assert torch.equal(out, paged_attention(q, dense_k, dense_v, blocks, cu, lens, d ** -0.5))
    ref = paged_attention_ref(q, dense_k, dense_v, blocks, cu, lens, d ** -0.5)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_plugin_entry_point_and_lazy_imports():
    pytest.importorskip("vllm")
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("rlhf_exact") == "rlhf_exact.sampler.vllm_plugin:register"
    code = (
        "import sys\n"
        "import rlhf_exact.sampler, rlhf_exact.sampler.engine, rlhf_exact.sampler.actor\n"
        "assert 'vllm' not in sys.modules and 'ray' not in sys.modules, "
        "sorted(m for m in sys.modules if m in ('vllm', 'ray'))\n"
        "from rlhf_exact.sampler.vllm_plugin import register\n"
        "register(); register()\n"
        "from vllm import ModelRegistry\n"
        "from vllm.v1.attention.backends.registry import AttentionBackendEnum\n"
        "assert AttentionBackendEnum['EXACT_ATTN'].get_class().__name__ == 'ExactAttentionBackend'\n"
        "assert 'Qwen3ForCausalLM' in ModelRegistry.get_supported_archs()\n"
        "assert 'rlhf_exact.sampler.vllm_model' not in sys.modules  # registered lazily\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
