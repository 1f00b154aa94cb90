"""The sampler fleet's contract as one typed record, the twin of trainer/worker.py's
`TrainerSpec`: `SamplerGroup.from_config` builds a `SamplerSpec` from the validated
config (its range checks are the schema's, made once there), and the group, its actors
and their engines read their settings from it; an engine gets `spec.engine`'s fields as
its constructor's keywords (backend.py: the keywords a backend must take).

    spec = SamplerSpec(model_path="path/to/model", engine=EngineSpec(temperature=0.7, max_model_len=512))
    samplers = SamplerGroup(spec)

Plain dataclasses: no Ray, no vLLM, so a backend check (preflight) reads them cheaply.
"""
from __future__ import annotations

import dataclasses

from .engine import RequestParams

MAX_RESTARTS = 3  # per actor, by Ray (config sampler.max_restarts)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What every engine is built with: a backend's constructor keywords (`kwargs`)."""

    temperature: float = 1.0  # the engine's T: logprobs are of logits / T (engine.py)
    dtype: str = "bfloat16"  # the engine's weights and activations
    max_model_len: int = 512  # prompt + completion tokens per sequence
    max_num_seqs: int = 16  # sequences decoded together
    enable_prefix_caching: bool = True
    seed: int = 0  # the engine's own seed (requests carry theirs)
    exact: bool = True  # the exact plugin (False: stock vLLM, kernels=default)
    kv_cache_memory_bytes: int | None = 64 << 20  # None: vLLM sizes it from gpu_memory_utilization
    gpu_memory_utilization: float | None = None  # CUDA: the fraction of the GPU vLLM may take; None: not passed
    cuda_graphs: bool | str | None = None  # vLLM on CUDA: True, False or "mixed" (Sampler); None: not passed

    def kwargs(self) -> dict:
        """The constructor keywords; the CUDA-only ones when set."""
        kw = dataclasses.asdict(self)
        return {k: v for k, v in kw.items() if v is not None or k not in OPTIONAL}


OPTIONAL = ("gpu_memory_utilization", "cuda_graphs")  # passed only when set
# what every backend's constructor takes (cuda_graphs is passed to the vLLM backend only)
BACKEND_KEYWORDS = tuple(f.name for f in dataclasses.fields(EngineSpec) if f.name != "cuda_graphs")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """The sampler group: where its actors run, how calls are timed and retried, what each
    engine is built with and the requests' default parameters (sampler/group.py)."""

    model_path: str  # the HF model directory every engine loads at start
    num_samplers: int = 1  # actors, one engine each
    backend: str = "vllm"  # "vllm" or an import path 'package.module:Class' (backend.py)
    device: str = "cpu"  # "cpu" | "cuda"
    gpus_per_actor: float = 1.0  # CUDA: the GPU share each actor reserves (colocated: what the trainer leaves)
    cpus_per_actor: float = 0.5  # the CPUs each actor reserves in Ray
    engine_process: str = "separate"  # "separate": vLLM's engine core and worker in processes of their own;
    # "inline": both in the actor's process (config sampler.engine_process; group.py)
    engine: EngineSpec = EngineSpec()
    params: RequestParams = RequestParams()  # the default per-request sampling parameters
    bucket_bytes: int = 64 << 20  # weight updates through the host go in buckets of this size
    deadline_s: float = 600.0  # a call's deadline: these seconds plus its work at the rates below
    deadline_tokens_per_s: float = 20.0
    deadline_mb_per_s: float = 20.0
    max_restarts: int = MAX_RESTARTS  # per actor, by Ray; the group retries a call as often
