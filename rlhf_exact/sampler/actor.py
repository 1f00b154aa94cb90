"""The body of a sampler Ray actor: one sampler backend (backend.py; config
`sampler.backend`: "vllm" is `engine.Sampler`, a vLLM engine with the exact plugin, or an
import path 'package.module:Class') in a Ray actor process. Plain Python: `SamplerGroup` (group.py) wraps it with
`ray.remote`, so the model, the kernels and the rest of the sampler never import Ray.

    import ray
    from rlhf_exact.sampler.actor import SamplerActor
    actor = ray.remote(num_cpus=1)(SamplerActor).remote("path/to/model", temperature=1.0, max_model_len=512)
    ray.get(actor.ready.remote())
    results = ray.get(actor.sample.remote(prompts, n=4, params=RequestParams(max_tokens=64), seeds=seeds))
    seconds = ray.get(actor.update_weights.remote(named_bf16_tensors, bucket_bytes=64 << 20))

Results are `engine.SampleResult` objects (token ids, fp32 logprob tensors, finish
reasons, per-request errors); see engine.py for the exact definition of the logprobs.
The vLLM engine starts its own worker processes (spawn) from the actor process.

A dead engine ends its actor: vLLM does not restart an EngineCore process that died (it
answers every later call with EngineDeadError), so a call that meets one (sample,
update_weights, get_weights) makes the actor process exit, and Ray restarts the actor
with a new engine; SamplerGroup then sends it the latest weights and retries its work,
as for an actor that died any other way.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

import torch

from .backend import SamplerBackend, check_facts, load_backend
from .engine import SampleResult, RequestParams


class SamplerActor:
    """The actor's body (plain Python; SamplerGroup wraps it with ray.remote)."""

    def __init__(self, model: str, backend: str = "vllm", **sampler_kwargs):
        """backend: config sampler.backend (backend.load_backend); sampler_kwargs go to
        its constructor."""
        from rlhf_exact.models.ops import select_kernels

        # The one switch, before vLLM starts its workers and their process group: they
        # inherit the NCCL variables exact mode sets (its aten routing covers this process).
        # kernels=default runs vLLM's own model (the group starts it with VLLM_PLUGINS=none).
        select_kernels("exact" if sampler_kwargs.get("exact", True) else "default")
        self.sampler: SamplerBackend = load_backend(backend)(model, **sampler_kwargs)
        check_facts(self.sampler)

    def ready(self) -> dict:
        """Engine facts, once it is up: temperature, vocab size, max_model_len."""
        s = self.sampler
        return {"temperature": s.temperature, "vocab_size": s.vocab_size, "max_model_len": s.max_model_len}

    def sample(self, prompts: Sequence[Sequence[int]], n: int = 1,
               params: RequestParams | Sequence[RequestParams] | None = None,
               seeds: Sequence[int | None] | None = None) -> list[SampleResult]:
        with _exit_on_dead_engine("sample"):
            results = self.sampler.sample(prompts, n=n, params=params, seeds=seeds)
        dead = next((r.error for r in results if r.error and r.error.startswith(DEAD)), None)
        if dead:  # the engine refused each request: vLLM reports a dead engine per request
            _exit_for_restart("sample", dead)
        return results

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor], bucket_bytes: int = 64 << 20) -> float:
        """In-place weight update (validated whole first); returns the seconds it took."""
        with _exit_on_dead_engine("update_weights"):
            return self.sampler.update_weights(named_tensors, bucket_bytes=bucket_bytes)

    def update_weights_shared(self, shared) -> float:
        """In-place update from the trainer's shared GPU buffer (types.SharedWeights)."""
        with _exit_on_dead_engine("update_weights"):
            return self.sampler.update_weights_shared(shared)

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with _exit_on_dead_engine("get_weights"):
            return self.sampler.get_weights(names)

    def shutdown(self) -> None:
        self.sampler.shutdown()



DEAD = "EngineDeadError"  # vLLM's exception for an engine whose core process is gone


@contextlib.contextmanager
def _exit_on_dead_engine(call: str):
    try:
        yield
    except Exception as e:
        chain, x = [], e
        while x is not None and x not in chain:
            chain.append(x)
            x = x.__cause__ or x.__context__
        dead = next((x for x in chain if type(x).__name__ == DEAD), None)
        if dead is None:
            raise
        _exit_for_restart(call, f"{DEAD}: {dead}")


def _exit_for_restart(call: str, why: str) -> None:
    """End this actor's process: Ray counts it as a death and restarts the actor (module
    docstring). Nothing is returned to the caller, whose call fails as RayActorError."""
    print(f"sampler: the vLLM engine is dead ({why.splitlines()[0][:200]}) in {call}; the actor exits so that "
          f"Ray restarts it", file=sys.stderr, flush=True)
    os._exit(1)
