"""The sampler group: `num_samplers` Ray actors, each one vLLM engine (engine.py) with
the exact plugin, or stock vLLM for kernels=default. Prompts are dealt round-robin to
the engines; results come back in prompt order.

Every call has a deadline derived from its work (runtime/deadline.py): a sampling call
deadline_s plus its tokens (prompts x n x max_tokens) at deadline_tokens_per_s, a weight
update deadline_s plus its bytes at deadline_mb_per_s. A call past its deadline (a hung
engine) is handled like a dead actor: the actor is killed and restarted by Ray, gets the
latest weights (within their deadline), and samples its share again. An engine process
that dies ends its actor at once (the actor's watchdog, actor.py), and a call that meets
an engine found dead (EngineDeadError in sample, a weight update, get_weights) ends its
actor itself: a dead actor too, found in under a second. A call that reaches an actor
restarted since the last update raises StaleWeights (every call carries the weights
version) and is run again after the current weights are re-sent.
Each deadline counts from the call's submission (the engines run at once), so a
step waits at most the longest deadline, as the trainer group does.

    samplers = SamplerGroup.from_config(cfg, model_path)    # or SamplerGroup(SamplerSpec(...)): spec.py
    results = samplers.sample(prompts, n=8, seeds=seeds)   # the config's sampling parameters
    seconds = samplers.update_weights(trainer.full_weights("bfloat16"))

The twin of trainer/group.py. It owns the samplers' kernel selection (each actor runs
the exact-mode switch, or starts vLLM without plugins: VLLM_PLUGINS=none) and their
restart logic: Ray restarts a dead actor (sampler.max_restarts), the group re-sends the latest
weights to it and retries its share of the work. Ray is imported here only; actor.py
stays plain.
"""
from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Sequence

import torch

from rlhf_exact.runtime.deadline import MIB, deadline, tensor_bytes
from rlhf_exact.types import SharedWeights

from .actor import SamplerActor, StaleWeights
from .engine import RequestParams, SampleResult
from .spec import EngineSpec, SamplerSpec

log = logging.getLogger("rlhf_exact")


def actor_env(spec: SamplerSpec) -> dict[str, str]:
    """The environment variables of a sampler actor's process (its Ray runtime_env)."""
    env = {} if spec.engine.exact else {"VLLM_PLUGINS": "none"}  # kernels=default: vLLM's own model, kernels
    env |= {"OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    # inline: vLLM's in-process engine core (and on CPU its one-process executor) in the
    # actor's own process, which nothing else shares; separate: vLLM's default
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if spec.engine_process == "inline" else "1"
    return env


class SamplerGroup:
    actor_class = SamplerActor  # the actors' body (a test may run a subclass)

    def __init__(self, spec: SamplerSpec):
        """spec: everything the group, its actors and their engines are built with (spec.py)."""
        import ray

        self.spec, self.params, self.max_restarts = spec, spec.params, spec.max_restarts
        opts = dict(max_restarts=spec.max_restarts, max_task_retries=0)
        if spec.device == "cuda":
            opts["num_gpus"] = spec.gpus_per_actor
        opts["runtime_env"] = {"env_vars": actor_env(spec)}
        self._check_placement()
        cls = ray.remote(num_cpus=spec.cpus_per_actor, **opts)(self.actor_class)
        self.actors = [cls.remote(spec.model_path, spec.backend, **spec.engine.kwargs())
                       for _ in range(spec.num_samplers)]
        ray.get([a.ready.remote() for a in self.actors])  # surfaces an engine start error here
        self.weights = None  # the latest weights sent (re-sent to a restarted actor)
        self.version = 0  # their number: every call says which weights it expects (actor.py)
        self.restarts = 0

    @classmethod
    def from_config(cls, cfg, model_path: pathlib.Path) -> SamplerGroup:
        """The run's samplers: its SamplerSpec from the validated config (duck-typed: the
        sampler does not import the config), engines from the sampler section, requests
        from the sampling section (its temperature is the engines': engine.py)."""
        s, c, sp = cfg.sampler, cfg.cluster, cfg.sampling
        cuda = c.device == "cuda"
        engine = EngineSpec(temperature=sp.temperature, dtype=cfg.model.dtype, max_model_len=s.max_model_len,
                            max_num_seqs=s.max_num_seqs, enable_prefix_caching=s.enable_prefix_caching,
                            seed=cfg.run.seed, exact=cfg.kernels == "exact",
                            kv_cache_memory_bytes=s.kv_cache_bytes or (None if cuda else 64 << 20),
                            gpu_memory_utilization=s.gpu_memory_utilization if cuda else None,
                            cuda_graphs=s.cuda_graphs if cuda and s.backend == "vllm" else None)
        params = RequestParams(max_tokens=sp.max_tokens, top_k=sp.top_k, top_p=sp.top_p,
                               stop_token_ids=tuple(sp.stop_token_ids))
        return cls(SamplerSpec(model_path=str(model_path), num_samplers=s.num_samplers, backend=s.backend,
                               device=c.device, gpus_per_actor=c.gpus_per_actor("sampler"),
                               cpus_per_actor=c.cpus_per_actor(), engine_process=s.resolved_engine_process(c.device),
                               engine=engine,
                               params=params, bucket_bytes=c.weight_sync_bucket_mb << 20, deadline_s=s.deadline_s,
                               deadline_tokens_per_s=s.deadline_tokens_per_s, deadline_mb_per_s=s.deadline_mb_per_s,
                               max_restarts=s.max_restarts))

    def _check_placement(self) -> None:
        """Reserve what the actors will ask for, at most deadline_s, then let it go: a
        cluster that cannot give them their CPUs or GPUs raises PlacementTimeout naming the
        resource, instead of leaving the actors pending forever (their ready() also waits
        for the engines' start, which has no bound of its own)."""
        from rlhf_exact.runtime.deadline import probe_placement

        s = self.spec
        bundle = {"CPU": s.cpus_per_actor} | ({"GPU": s.gpus_per_actor} if s.device == "cuda" else {})
        probe_placement(f"{s.num_samplers} sampler(s)", bundle, s.num_samplers, s.deadline_s,
                        "sampler.num_samplers, cluster.num_cpus/num_gpus, sampler.deadline_s")

    def sample(self, prompts: Sequence[Sequence[int]], n: int, seeds: Sequence[int],
               params: RequestParams | Sequence[RequestParams] | None = None) -> list[SampleResult]:
        """n completions of every prompt (sample j of prompt i seeded seeds[i] + j), in
        prompt order, with `params` (default: the group's), one for all prompts or one per
        prompt (a multi-turn episode's turn gets the token budget it has left). A sampler
        that dies is restarted and its share sampled again, as is one past its deadline or
        with a dead engine (module docstring)."""
        params = params or self.params
        k = len(self.actors)
        shares = {i: list(range(i, len(prompts), k)) for i in range(k)}
        shares = {i: sh for i, sh in shares.items() if sh}
        per = [params] * len(prompts) if isinstance(params, RequestParams) else list(params)

        def submit(i):
            share = shares[i]
            p = params if isinstance(params, RequestParams) else [params[j] for j in share]
            seconds = deadline(self.spec.deadline_s, n * sum(per[j].max_tokens for j in share),
                               self.spec.deadline_tokens_per_s)
            return self.actors[i].sample.remote([prompts[j] for j in share], n, p, [seeds[j] for j in share],
                                                self.version), seconds

        out = [None] * len(prompts)
        pending, sent = {i: submit(i) for i in shares}, time.monotonic()
        for _ in range(self.max_restarts + 1):
            failed = []
            for i, (ref, seconds) in pending.items():
                results = self._sample_result(i, ref, sent + seconds, seconds)
                if results is None:
                    failed.append(i)
                    continue
                for j, r in zip(shares[i], results):
                    out[j] = r
            if not failed:
                return out
            self.restarts += len(failed)
            for i in failed:
                self._revive(i)
            pending, sent = {i: submit(i) for i in failed}, time.monotonic()
        raise RuntimeError(f"sampler actor(s) {sorted(failed)}: sample died or gave no result within its deadline "
                           f"(the last {seconds:.0f} s) {self.max_restarts + 1} times; the run stops")

    def _sample_result(self, i: int, ref, end: float, seconds: float) -> list[SampleResult] | None:
        """Sampler i's results by monotonic time `end`, or None when it died, hung (then
        killed: Ray restarts it; a dead engine ends its actor) or holds stale weights."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:  # each deadline counts from the submission: the engines run at once
            results = ray.get(ref, timeout=max(0.0, end - time.monotonic()))
        except RayActorError as e:
            log.warning("sampler %d died during sampling (%s); waiting for Ray to restart it", i, type(e).__name__)
            return None
        except GetTimeoutError:
            log.warning("sampler %d gave no result within its deadline of %.0f s (a dead or hung vLLM "
                        "engine); restarting it", i, seconds)
            ray.kill(self.actors[i], no_restart=False)
            return None
        except StaleWeights:
            log.warning("sampler %d was restarted since the last weight sync (its engine died while "
                        "idle); sending it the current weights", i)
            return None
        return results

    def update_weights(self, weights: dict[str, torch.Tensor] | SharedWeights) -> float:
        """Send weights to every sampler (in place, validated whole first), each within the
        update's deadline (module docstring); returns the slowest engine's seconds. HF-named
        tensors go through Ray and the host in buckets; a `SharedWeights` (colocated on
        CUDA, cluster.weight_sync=cuda_ipc) is opened by each engine on the GPU. A sampler
        that dies or hangs is restarted and sent them again."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        self.weights, self.version = weights, self.version + 1
        ref = weights if isinstance(weights, SharedWeights) else ray.put(weights)
        refs = [self._update(a, ref) for a in self.actors]
        seconds, end = [], time.monotonic() + self.update_deadline()  # one deadline: the updates run at once
        for i, r in enumerate(refs):
            try:
                seconds.append(ray.get(r, timeout=max(0.0, end - time.monotonic())))
            except (RayActorError, GetTimeoutError) as e:
                self._restart(i, "update_weights", e)
        return max(seconds, default=0.0)

    def _update(self, actor, weights):
        if isinstance(weights, SharedWeights):
            return actor.update_weights_shared.remote(weights, self.version)
        return actor.update_weights.remote(weights, self.spec.bucket_bytes, self.version)

    def update_deadline(self) -> float:
        """Seconds a weight update of the latest weights may take (module docstring)."""
        w = self.weights
        return deadline(self.spec.deadline_s, w.nbytes if isinstance(w, SharedWeights) else tensor_bytes(w),
                        self.spec.deadline_mb_per_s * MIB)

    def _restart(self, i: int, call: str, error: BaseException) -> None:
        """Sampler i died or hung in `call`: kill it (Ray restarts it) and revive it."""
        import ray
        from ray.exceptions import GetTimeoutError

        if isinstance(error, GetTimeoutError):
            log.warning("sampler %d: %s gave no result within its deadline of %.0f s; restarting it", i, call,
                        self.update_deadline())
            ray.kill(self.actors[i], no_restart=False)
        else:
            log.warning("sampler %d died during %s; waiting for Ray to restart it", i, call)
        self.restarts += 1
        self._revive(i)

    def _revive(self, i: int) -> None:
        """Wait for Ray to restart sampler i and send it the latest weights (the restarted
        engine loaded the initial checkpoint); one that dies or hangs again is killed and
        revived again, spec.max_restarts times at most."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        for _ in range(self.max_restarts):
            self._wait_ready(i)
            if self.weights is None:
                return
            try:
                ray.get(self._update(self.actors[i], self.weights), timeout=self.update_deadline())
                return
            except (RayActorError, GetTimeoutError) as e:
                log.warning("sampler %d: update_weights after its restart failed (%s); restarting it again", i,
                            type(e).__name__)
                ray.kill(self.actors[i], no_restart=False)
                self.restarts += 1
        raise RuntimeError(f"sampler {i}: update_weights died or gave no result within its deadline of "
                           f"{self.update_deadline():.0f} s after {self.max_restarts} restarts; the run stops")

    def _wait_ready(self, i: int) -> None:
        import ray
        from ray.exceptions import RayActorError

        for _ in range(120):
            try:
                ray.get(self.actors[i].ready.remote())
                return
            except RayActorError:
                time.sleep(1.0)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            ray.kill(a)

