"""The Ray sampler actor: starts a local Ray (127.0.0.1, no dashboard), the actor with a
vLLM engine inside, samples, updates the weights, and checks the logprobs against the
trainer's bitwise (the chain is in test_engine_parity.py)."""
import pytest
import torch

pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

from rlhf_exact.models.hf_io import hf_state_dict, load_model  # noqa: E402
from rlhf_exact.models.qwen3 import pack_sequences, packed_logprobs  # noqa: E402
from rlhf_exact.models.tiny import make_tiny_model_dir  # noqa: E402
from rlhf_exact.sampler.engine import RequestParams  # noqa: E402

pytestmark = pytest.mark.slow


def test_ray_sampler_actor_samples_and_updates(local_ray, tmp_path):
    from rlhf_exact.sampler.actor import SamplerActor

    path = make_tiny_model_dir(tmp_path / "tiny", seed=5, std=0.05, norm_noise=0.1, num_hidden_layers=2)
    actor = ray.remote(num_cpus=1)(SamplerActor).remote(str(path), temperature=1.0, max_model_len=128, max_num_seqs=8)
    info = ray.get(actor.ready.remote(), timeout=600)
    assert info["temperature"] == 1.0 and info["vocab_size"] == 512

    prompts = [[5, 6, 7, 8], [40, 41, 42, 43, 44, 45, 46], []]
    res = ray.get(actor.sample.remote(prompts, n=3, params=RequestParams(max_tokens=12), seeds=[1, 2, 3]),
                  timeout=600)
    assert res[2].error == "empty prompt" and all(r.error is None for r in res[:2])
    model, _ = load_model(path, dtype=torch.bfloat16)
    new_model, _ = load_model(path, dtype=torch.bfloat16)
    new_model.init_weights(seed=42, std=0.05, norm_noise=0.1)
    seconds = ray.get(actor.update_weights.remote(hf_state_dict(new_model), bucket_bytes=1 << 18), timeout=600)
    assert seconds > 0
    res_new = ray.get(actor.sample.remote(prompts[:2], n=2, params=RequestParams(max_tokens=12), seeds=[1, 2]),
                      timeout=600)
    for m, results in ((model, res[:2]), (new_model, res_new)):
        pairs = [(p, c) for p, r in zip(prompts, results) for c in r.completions]
        assert all(c.finish_reason in ("stop", "length") for _, c in pairs)
        batch = pack_sequences([p + c.token_ids for p, c in pairs])
        with torch.no_grad():
            lp = packed_logprobs(m, batch, 1.0)
        cu = batch.cu_seqlens.tolist()
        for k, (p, c) in enumerate(pairs):
            start = cu[k] + len(p) - 1
            assert torch.equal(c.logprobs, lp[start:start + len(c.token_ids)])
    ray.get(actor.shutdown.remote(), timeout=120)
