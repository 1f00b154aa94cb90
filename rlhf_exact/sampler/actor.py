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
"""
from __future__ import annotations

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
        return self.sampler.sample(prompts, n=n, params=params, seeds=seeds)

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor], bucket_bytes: int = 64 << 20) -> float:
        """In-place weight update (validated whole first); returns the seconds it took."""
        return self.sampler.update_weights(named_tensors, bucket_bytes=bucket_bytes)

    def update_weights_shared(self, shared) -> float:
        """In-place update from the trainer's shared GPU buffer (types.SharedWeights)."""
        return self.sampler.update_weights_shared(shared)

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.sampler.get_weights(names)

    def shutdown(self) -> None:
        self.sampler.shutdown()

