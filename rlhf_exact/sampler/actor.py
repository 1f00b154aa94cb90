"""The Ray sampler actor: one `engine.Sampler` (a vLLM engine with the exact plugin) in a
Ray actor process. Ray is imported only inside `sampler_actor`, so the model, the
kernels and the rest of the sampler never import it.

    import ray
    from rlhf_exact.sampler.actor import sampler_actor
    actor = sampler_actor(num_cpus=1).remote("path/to/model", temperature=1.0, max_model_len=512)
    ray.get(actor.ready.remote())
    results = ray.get(actor.sample.remote(prompts, n=4, params=SamplingConfig(max_tokens=64), seeds=seeds))
    seconds = ray.get(actor.update_weights.remote(named_bf16_tensors, bucket_bytes=64 << 20))

Results are `engine.SampleResult` objects (token ids, fp32 logprob tensors, finish
reasons, per-request errors); see engine.py for the exact definition of the logprobs.
The vLLM engine starts its own worker processes (spawn) from the actor process.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .engine import SampleResult, Sampler, SamplingConfig


class SamplerActor:
    """The actor's body (plain Python; `sampler_actor` wraps it with ray.remote)."""

    def __init__(self, model: str, **sampler_kwargs):
        if sampler_kwargs.get("exact", True):
            from exact_kernels import enable_exact_mode

            # The one switch, before vLLM starts its workers and their process group: they
            # inherit the NCCL variables it sets (its aten routing covers this process).
            self.exact_mode_report = enable_exact_mode()
        self.sampler = Sampler(model, **sampler_kwargs)

    def ready(self) -> dict:
        """Engine facts, once it is up: temperature, vocab size, max_model_len."""
        s = self.sampler
        return {"temperature": s.temperature, "vocab_size": s.vocab_size, "max_model_len": s.max_model_len}

    def sample(self, prompts: Sequence[Sequence[int]], n: int = 1,
               params: SamplingConfig | Sequence[SamplingConfig] | None = None,
               seeds: Sequence[int | None] | None = None) -> list[SampleResult]:
        return self.sampler.sample(prompts, n=n, params=params, seeds=seeds)

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor], bucket_bytes: int = 64 << 20) -> float:
        """In-place weight update (validated whole first); returns the seconds it took."""
        return self.sampler.update_weights(named_tensors, bucket_bytes=bucket_bytes)

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.sampler.get_weights(names)

    def shutdown(self) -> None:
        self.sampler.shutdown()


def sampler_actor(num_cpus: float = 1, **ray_options):
    """The Ray actor class of `SamplerActor` with the given resources (imports Ray)."""
    import ray

    return ray.remote(num_cpus=num_cpus, **ray_options)(SamplerActor)
