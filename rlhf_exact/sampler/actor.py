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
The vLLM engine runs where `SamplerSpec.engine_process` says (config
sampler.engine_process): "separate" starts its engine core and model worker as processes
of their own (spawn) from the actor process, vLLM's default and the CUDA one; "inline"
runs both in the actor's process, which saves two interpreter starts and vLLM's polling
between processes (the CPU default: docs/design.md, "Tests").

A dead engine process is found in under a second, not at a call's deadline: a raw
vLLM call on an engine whose core died can block until then, and an engine that dies
while idle would fail the next call of any kind. A watchdog thread polls the processes
the backend started (the actor knows them: its children) and, when one dies, ends the
actor process, so every call in flight fails at once with RayActorError and Ray restarts
the actor (SamplerGroup then re-sends the weights). A restarted actor holds the initial
weights, so every call says which weights version it expects (`weights_version`, set by
the updates): a call that reaches a restarted actor raises `StaleWeights` instead of
sampling on the wrong weights, and the group revives it.

An inline engine has no process of its own to watch: an error raised inside one of
its steps is its death (engine.engine_step_failed), and the call that meets it ends the
actor as below. A dead engine that the watchdog misses (an in-process backend, say)
ends its actor at the next call: vLLM does not restart an EngineCore process that died
(it answers every later call with EngineDeadError), so a call that meets one (sample,
update_weights, get_weights) makes the actor process exit the same way.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import torch

from .backend import SamplerBackend, check_facts, load_backend
from .engine import SampleResult, RequestParams, engine_step_failed


log = logging.getLogger("rlhf_exact")

WATCH_S = 0.2  # how often the watchdog looks at the engine's processes


class StaleWeights(RuntimeError):
    """A call expected weights this actor does not hold (it was restarted since the last
    update and holds the initial checkpoint's)."""


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
        self.weights_version = 0  # the initial checkpoint's; each update sets the group's number
        self.watching = threading.Event()  # cleared by shutdown: its engine processes end then
        self.engine_pids = watch(engine_processes(self.sampler), self.watching)

    def _check_version(self, version: int | None) -> None:
        if version is not None and version != self.weights_version:
            raise StaleWeights(f"this sampler holds weights version {self.weights_version}, the call expects "
                               f"{version} (it was restarted since the last update)")

    def ready(self) -> dict:
        """Engine facts, once it is up: temperature, vocab size, max_model_len."""
        s = self.sampler
        return {"temperature": s.temperature, "vocab_size": s.vocab_size, "max_model_len": s.max_model_len}

    def sample(self, prompts: Sequence[Sequence[int]], n: int = 1,
               params: RequestParams | Sequence[RequestParams] | None = None,
               seeds: Sequence[int | None] | None = None, version: int | None = None) -> list[SampleResult]:
        """version: the weights version the caller expects (None: whatever is loaded)."""
        self._check_version(version)
        with _exit_on_dead_engine("sample"):
            results = self.sampler.sample(prompts, n=n, params=params, seeds=seeds)
        dead = next((r.error for r in results if r.error and r.error.startswith(DEAD)), None)
        if dead:  # the engine refused each request: vLLM reports a dead engine per request
            _exit_for_restart("sample", dead)
        return results

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor], bucket_bytes: int = 64 << 20,
                       version: int | None = None) -> float:
        """In-place weight update (validated whole first); returns the seconds it took.
        version: the number these weights get (weights_version) once loaded."""
        with _exit_on_dead_engine("update_weights"):
            seconds = self.sampler.update_weights(named_tensors, bucket_bytes=bucket_bytes)
        self.weights_version = self.weights_version if version is None else version
        return seconds

    def update_weights_shared(self, shared, version: int | None = None) -> float:
        """In-place update from the trainer's shared GPU buffer (types.SharedWeights)."""
        with _exit_on_dead_engine("update_weights"):
            seconds = self.sampler.update_weights_shared(shared)
        self.weights_version = self.weights_version if version is None else version
        return seconds

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with _exit_on_dead_engine("get_weights"):
            return self.sampler.get_weights(names)

    def shutdown(self) -> None:
        self.watching.clear()
        self.sampler.shutdown()



def engine_processes(sampler) -> list:
    """The processes the backend's engine runs in, as psutil.Process: those the backend
    names (an `engine_pids()` method), else this process's descendants that vLLM titled
    ("VLLM::EngineCore", its workers). Empty for an in-process backend."""
    import psutil

    if hasattr(sampler, "engine_pids"):
        return [psutil.Process(pid) for pid in sampler.engine_pids()]
    return [p for p in psutil.Process(os.getpid()).children(recursive=True) if _name(p).startswith("VLLM::")]


def watch(procs: list, watching: threading.Event) -> list[int]:
    """Start the watchdog (module docstring) over `procs` while `watching` is set (set
    here); returns their pids. When one of them dies, this process logs it and exits at
    once (status 1), without cleanup: the engine it would wait for is gone."""
    import psutil

    watching.set()

    def loop():
        while watching.is_set():
            for p in procs:
                try:
                    alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                except psutil.NoSuchProcess:
                    alive = False
                if not alive and watching.is_set():
                    log.error("sampler engine process %d (%s) died; the sampler actor exits to be restarted",
                              p.pid, _name(p))
                    os._exit(1)
            time.sleep(WATCH_S)

    if procs:
        threading.Thread(target=loop, name="engine-watchdog", daemon=True).start()
    return [p.pid for p in procs]


def _name(p) -> str:
    try:
        return p.name()
    except Exception:  # noqa: BLE001 - a name for the log line only; the process is gone
        return "?"


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
        dead = next((x for x in chain if type(x).__name__ == DEAD or engine_step_failed(x)), None)
        if dead is None:
            raise
        _exit_for_restart(call, f"{type(dead).__name__}: {dead}")


def _exit_for_restart(call: str, why: str) -> None:
    """End this actor's process: Ray counts it as a death and restarts the actor (module
    docstring). Nothing is returned to the caller, whose call fails as RayActorError."""
    print(f"sampler: the vLLM engine is dead ({why.splitlines()[0][:200]}) in {call}; the actor exits so that "
          f"Ray restarts it", file=sys.stderr, flush=True)
    os._exit(1)
