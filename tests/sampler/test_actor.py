"""The Ray sampler actor: starts a local Ray (127.0.0.1, no dashboard), the actor with a
vLLM engine inside, samples, updates the weights, and checks the logprobs against the
trainer's bitwise (the chain is in test_engine_parity.py), its engine inline. And the
sampler group's weight-update deadline: an actor whose first update hangs (a subclass of the real actor,
the group's actor_class) is restarted at the deadline and sent the weights again; and
an engine process killed while idle, before a sampling call and before a weight update:
the actor's watchdog ends it at once, and each call still gives the current weights'
samples, without waiting for a deadline. And an inline engine (engine_process="inline",
the loop's CPU default): no engine process beside the actor, and a model forward that
raises inside an engine step ends the actor, which is restarted and samples the
trainer's logprobs bitwise.

    .venv/bin/python -m pytest -q tests/sampler/test_actor.py
"""
import dataclasses
import os
import pathlib
import signal
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
from rlhf_exact.sampler.spec import EngineSpec, SamplerSpec

pytestmark = pytest.mark.slow


def assert_trainer_logprobs(model, pairs) -> None:
    """Every (prompt, completion) pair's sampler logprobs are bitwise the trainer's
    (`packed_logprobs` over all pairs packed, T = 1)."""
    batch = pack_sequences([p + c.token_ids for p, c in pairs])
    with torch.no_grad():
        lp = packed_logprobs(model, batch, 1.0)
    cu = batch.cu_seqlens.tolist()
    for k, (p, c) in enumerate(pairs):
        start = cu[k] + len(p) - 1
        assert torch.equal(c.logprobs, lp[start:start + len(c.token_ids)])


def test_ray_sampler_actor_samples_and_updates(local_ray, tmp_path):
    """An inline engine (the loop's CPU default; the separate one: the tests below)."""
    from rlhf_exact.sampler.actor import SamplerActor
    from rlhf_exact.sampler.group import actor_env

    path = make_tiny_model_dir(tmp_path / "tiny", seed=5, std=0.05, norm_noise=0.1, num_hidden_layers=2)
    env = actor_env(SamplerSpec(str(path), engine_process="inline"))
    actor = ray.remote(num_cpus=1, runtime_env={"env_vars": env})(SamplerActor).remote(
        str(path), temperature=1.0, max_model_len=128, max_num_seqs=8)
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
        assert_trainer_logprobs(m, pairs)
    ray.get(actor.shutdown.remote(), timeout=120)


class HangOnceActor(SamplerActor):
    """Its first weight update (over all restarts: a file beside the model marks it) hangs."""

    def __init__(self, model: str, *args, **kwargs):
        self.marker = pathlib.Path(model).parent / "hung_once"
        super().__init__(model, *args, **kwargs)

    def update_weights(self, named_tensors, bucket_bytes=64 << 20, version=None):
        if not self.marker.exists():
            self.marker.touch()
            time.sleep(3600)
        return super().update_weights(named_tensors, bucket_bytes, version)


class HangOnceGroup(SamplerGroup):
    actor_class = HangOnceActor


def test_hung_weight_update_restarts_the_sampler(local_ray, tmp_path, caplog):
    path = make_tiny_model_dir(tmp_path / "tiny", seed=5, std=0.05, norm_noise=0.1, num_hidden_layers=2)
    group = HangOnceGroup(SamplerSpec(str(path), deadline_s=5.0, deadline_mb_per_s=20.0,
                                      engine=EngineSpec(temperature=1.0, max_model_len=128, max_num_seqs=8)))
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

        # the engine process killed while the sampler is idle, then each kind of call: the
        # watchdog ends the actor at once, Ray restarts it on the initial checkpoint, and the
        # call is not run on those weights (StaleWeights) but after the current ones are re-sent
        psutil = pytest.importorskip("psutil")
        # from here on a call may wait for its actor's restart (an engine start)
        group.spec = dataclasses.replace(group.spec, deadline_s=300.0)
        prompts, seeds = [[5, 6, 7, 8], [40, 41, 42]], [1, 2]
        ref = group.sample(prompts, 2, seeds)

        def kill_engine():
            """SIGKILL the engine's processes; return once the watchdog has ended the actor."""
            actor_pid, pids = ray.get(group.actors[0].__ray_call__.remote(lambda self: (os.getpid(), self.engine_pids)),
                                      timeout=60)
            assert pids, "the actor watches no engine process"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            t = time.monotonic()
            while time.monotonic() - t < 10 and alive(actor_pid):
                time.sleep(0.05)
            assert not alive(actor_pid), "the actor outlived its engine by 10 s"
            print(f"actor {actor_pid} ended {time.monotonic() - t:.2f} s after its engine {pids} was killed")

        def alive(pid):
            try:
                p = psutil.Process(pid)
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        caplog.clear()
        restarts = group.restarts
        kill_engine()
        for _ in range(300):  # Ray restarts it; a call sent now reaches the new actor (initial weights)
            try:
                ray.get(group.actors[0].ready.remote(), timeout=60)
                break
            except ray.exceptions.RayActorError:
                time.sleep(0.5)
        again = group.sample(prompts, 2, seeds)
        assert group.restarts == restarts + 1
        warned = [r.getMessage() for r in caplog.records]
        assert any(w.startswith("sampler 0 was restarted since the last weight sync") for w in warned), warned
        assert not any("deadline" in w for w in warned), warned
        for a, b in zip(ref, again):
            for ca, cb in zip(a.completions, b.completions):
                assert ca.token_ids == cb.token_ids and torch.equal(ca.logprobs, cb.logprobs)

        caplog.clear()
        kill_engine()  # and a weight update sent at once: the actor is unavailable, the group revives it
        group.update_weights(weights)
        warned = [r.getMessage() for r in caplog.records]
        assert any(w.startswith("sampler 0 died during update_weights") for w in warned), warned
        after = group.sample(prompts, 2, seeds)
        for a, b in zip(ref, after):
            for ca, cb in zip(a.completions, b.completions):
                assert ca.token_ids == cb.token_ids and torch.equal(ca.logprobs, cb.logprobs)
    finally:
        group.shutdown()



def _fail_once(worker, marker: str) -> None:
    """In the engine's worker: its model's next forward raises, once over all restarts
    (the file `marker` says it has)."""
    model = worker.model_runner.model
    forward = model.forward

    def once(*args, **kwargs):
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("injected: the model's forward failed")
        return forward(*args, **kwargs)

    model.forward = once


class FailOnceActor(SamplerActor):
    """Its engine's first model forward after the start raises (a file beside the model
    marks that it did, so the restarted actor's engine runs normally)."""

    def __init__(self, model: str, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.sampler.llm.collective_rpc(_fail_once, args=(str(pathlib.Path(model).parent / "failed_once"),))


class FailOnceGroup(SamplerGroup):
    actor_class = FailOnceActor


def test_inline_engine_error_restarts_the_sampler(local_ray, tmp_path, caplog):
    psutil = pytest.importorskip("psutil")
    path = make_tiny_model_dir(tmp_path / "tiny", seed=5, std=0.05, norm_noise=0.1, num_hidden_layers=2)
    group = FailOnceGroup(SamplerSpec(str(path), engine_process="inline",
                                      engine=EngineSpec(temperature=1.0, max_model_len=128, max_num_seqs=8)))
    caplog.set_level("WARNING", logger="rlhf_exact")
    try:
        pids, children = ray.get(group.actors[0].__ray_call__.remote(
            lambda self: (self.engine_pids, [p.name() for p in psutil.Process().children(recursive=True)])), timeout=60)
        assert pids == [] and not [n for n in children if n.startswith("VLLM::")], children  # one process
        prompts, seeds = [[5, 6, 7, 8], [40, 41, 42]], [1, 2]
        res = group.sample(prompts, 2, seeds, RequestParams(max_tokens=12))
        assert (tmp_path / "failed_once").exists() and group.restarts == 1
        warned = [r.getMessage() for r in caplog.records]
        assert any(w.startswith("sampler 0 died during sampling") for w in warned), warned
        model, _ = load_model(path, dtype=torch.bfloat16)
        pairs = [(p, c) for p, r in zip(prompts, res) for c in r.completions]
        assert len(pairs) == 4 and all(r.error is None for r in res)
        assert_trainer_logprobs(model, pairs)
    finally:
        group.shutdown()
