"""The Ray sampler actor: starts a local Ray (127.0.0.1, no dashboard), the actor with a
vLLM engine inside, samples, updates the weights, and checks the logprobs against the
trainer's bitwise (the chain is in test_engine_parity.py). And the sampler group's
weight-update deadline: an actor whose first update hangs (a subclass of the real actor,
the group's actor_class) is restarted at the deadline and sent the weights again; an
engine whose EngineCore process was killed after sampling ends its actor at the next
call (the weight update, get_weights), which the group restarts with the latest weights.

    .venv/bin/python -m pytest -q tests/sampler/test_actor.py
"""
import pathlib
import time

import pytest
import torch

pytest.importorskip("vllm")
pytest.importorskip("ray")

import ray

from rlhf_exact.models.hf_io import hf_state_dict, load_model
from rlhf_exact.models.qwen3 import pack_sequences, packed_logprobs
from rlhf_exact.models.tiny import make_tiny_model_dir
from rlhf_exact.sampler.actor import SamplerActor
from rlhf_exact.sampler.engine import RequestParams
from rlhf_exact.sampler.group import SamplerGroup

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


class HangOnceActor(SamplerActor):
    """Its first weight update (over all restarts: a file beside the model marks it) hangs."""

    def __init__(self, model: str, *args, **kwargs):
        self.marker = pathlib.Path(model).parent / "hung_once"
        super().__init__(model, *args, **kwargs)

    def update_weights(self, named_tensors, bucket_bytes=64 << 20):
        if not self.marker.exists():
            self.marker.touch()
            time.sleep(3600)
        return super().update_weights(named_tensors, bucket_bytes)


class HangOnceGroup(SamplerGroup):
    actor_class = HangOnceActor


def test_hung_weight_update_restarts_the_sampler(local_ray, tmp_path, caplog):
    path = make_tiny_model_dir(tmp_path / "tiny", seed=5, std=0.05, norm_noise=0.1, num_hidden_layers=2)
    group = HangOnceGroup(path, 1, deadline_s=5.0, deadline_mb_per_s=20.0, temperature=1.0, max_model_len=128,
                          max_num_seqs=8)
    new_model, _ = load_model(path, dtype=torch.bfloat16)
    new_model.init_weights(seed=42, std=0.05, norm_noise=0.1)
    weights = hf_state_dict(new_model)
    caplog.set_level("WARNING", logger="rlhf_exact")
    try:
        group.update_weights(weights)
        assert group.restarts == 1 and (tmp_path / "hung_once").exists()
        warned = [r.getMessage() for r in caplog.records]
        assert any(w.startswith("sampler 0: update_weights gave no result within its deadline of 5 s")
                   for w in warned), warned
        got = ray.get(group.actors[0].get_weights.remote(list(weights)), timeout=120)  # the restarted engine's
        assert got.keys() == weights.keys()
        for k in weights:
            assert torch.equal(got[k], weights[k]), k
    finally:
        group.shutdown()


def _kill_engine_cores():
    """SIGKILL the vLLM EngineCore processes under this process (this test's Ray only)."""
    import os
    import signal

    import psutil

    cores = [p for p in psutil.Process(os.getpid()).children(recursive=True)
             if p.name().startswith("VLLM::EngineCore")]
    for p in cores:
        os.kill(p.pid, signal.SIGKILL)
    psutil.wait_procs(cores, timeout=30)
    time.sleep(1.0)  # vLLM's monitor thread marks the engine dead when it sees the process gone
    return cores


def test_engine_killed_between_sampling_and_the_weight_sync(local_ray, tmp_path, caplog):
    pytest.importorskip("psutil")
    path = make_tiny_model_dir(tmp_path / "tiny", seed=5, std=0.05, norm_noise=0.1, num_hidden_layers=2)
    group = SamplerGroup(path, 1, temperature=1.0, max_model_len=128, max_num_seqs=8)
    new_model, _ = load_model(path, dtype=torch.bfloat16)
    new_model.init_weights(seed=42, std=0.05, norm_noise=0.1)
    weights = hf_state_dict(new_model)
    params = RequestParams(max_tokens=8)
    caplog.set_level("WARNING", logger="rlhf_exact")
    try:
        group.sample([[5, 6, 7]], 2, [1], params)
        assert _kill_engine_cores(), "no EngineCore process found"
        group.update_weights(weights)  # was: EngineDeadError, and the run stopped
        assert group.restarts == 1
        got = ray.get(group.actors[0].get_weights.remote(list(weights)), timeout=120)
        assert all(torch.equal(got[k], weights[k]) for k in weights)
        mid = group.sample([[5, 6, 7]], 2, [1], params)
        # found dead by the next sampling call: restarted, sent the latest weights, sampled again
        assert _kill_engine_cores()
        after = group.sample([[5, 6, 7]], 2, [1], params)
        assert group.restarts == 2 and after[0].error is None and len(after[0].completions) == 2
        for a, b in zip(mid[0].completions, after[0].completions):
            assert a.token_ids == b.token_ids and torch.equal(a.logprobs, b.logprobs)
    finally:
        group.shutdown()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and warned[0] == "sampler 0 died during update_weights; waiting for Ray to restart it"
    assert warned[1].startswith("sampler 0 died during sampling ("), warned  # ActorDiedError or ActorUnavailable...
