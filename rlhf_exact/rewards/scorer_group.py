"""The scorer group: `reward.model.num_scorers` Ray actors, each a RewardModelScorer
(model.py) on the exact kernels, on CPU or a GPU (its own, or a share of a trainer
rank's with cluster.colocate). A step's sequences are dealt round-robin to the actors
by index (sequence j to actor j mod k); the scores come back in sequence order.

    scorers = ScorerGroup.from_config(cfg)          # or ScorerGroup(ScorerSpec(...))
    scores = scorers.score([prompt_ids + completion_ids, ...])   # [B] fp32, like the scorer's
    scorers.shutdown()

The twin of sampler/group.py, in small: every call has a deadline derived from its work
(runtime/deadline.py: deadline_s plus the share's tokens at deadline_tokens_per_s),
counted from the call's submission (the actors score at once). An actor that dies
(RayActorError) or misses its deadline (then killed) is restarted by Ray
(reward.model.max_restarts) and scores its share again; after max_restarts restarts
within one call the group raises a RuntimeError naming the actors and the deadline. A
scorer holds no state a call changes, so a restarted actor needs nothing re-sent.

Why the scores do not depend on the group: with the exact kernels a sequence's score is
a function of its tokens alone (model.py), so the number of actors, which actor gets a
sequence, what else is in its share and a re-score after a restart change no bit
(tests/rewards/test_scorer_group.py: torch.equal against the in-process scorer). Each
actor runs the exact-mode switch before it loads the model, as the samplers and trainer
ranks do.

Sequences are checked in the driver before they are sent (model.check_sequences against
the model's vocabulary, which the actors report when ready), so a bad one is named by
its index in the call, not in an actor's share, and no actor sees it. Ray is imported
here only, inside the group's methods; the actor's body is plain Python.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import torch

from rlhf_exact.runtime.deadline import deadline

from .model import RewardModelScorer, check_sequences

log = logging.getLogger("rlhf_exact")

MAX_RESTARTS = 3  # per actor, by Ray (config reward.model.max_restarts)


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """The scorer group: where its actors run, what each loads, how calls are timed and
    retried. `ScorerGroup.from_config` builds it from the validated config."""

    model_path: str  # the Qwen3ForSequenceClassification directory every actor loads
    num_scorers: int = 1  # actors, one model each
    device: str = "cpu"  # "cpu" | "cuda"
    gpus_per_actor: float = 1.0  # CUDA: the GPU share each actor reserves (colocated: a trainer rank's leftover)
    cpus_per_actor: float = 0.5  # the CPUs each actor reserves in Ray
    dtype: str = "bfloat16"  # the model's weights and activations
    kernels: str = "exact"  # "exact" | "default": the actors' op table and exact-mode switch
    batch_tokens: int = 4096  # most tokens per forward (memory only: scores do not depend on it)
    deadline_s: float = 600.0  # a call's (and a start's) deadline: these seconds plus its tokens at the rate below
    start_deadline_s: float | None = None  # an actor's start or restart (process, imports, model load) when it
    # should differ from a call's (a short call deadline to catch hangs); None: deadline_s
    deadline_tokens_per_s: float = 20.0  # the slowest scoring rate (tokens per second, per actor) still alive
    max_restarts: int = MAX_RESTARTS  # per actor, by Ray; the group retries a call's share as often


def shares(num_sequences: int, num_actors: int) -> list[list[int]]:
    """Sequence indices per actor, round-robin and in order: actor i gets i, i + k, ...
    (k = num_actors); an actor may get none."""
    return [list(range(i, num_sequences, num_actors)) for i in range(num_actors)]


class ScorerActor:
    """The actor's body (plain Python; ScorerGroup wraps it with ray.remote)."""

    def __init__(self, model_path: str, dtype: str = "bfloat16", batch_tokens: int = 4096, kernels: str = "exact",
                 device: str = "cpu"):
        from rlhf_exact.models.ops import select_kernels

        select_kernels(kernels)  # the one switch, before the model is built (as every actor of the run)
        self.scorer = RewardModelScorer.load(model_path, getattr(torch, dtype), batch_tokens, kernels, device)

    def ready(self) -> dict:
        """Facts once the model is loaded: its vocabulary size, its device, this process."""
        return {"vocab_size": self.scorer.vocab_size, "device": str(next(self.scorer.model.parameters()).device),
                "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()

    def score(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores [B] fp32 on the CPU, in the input order (RewardModelScorer.score)."""
        return self.scorer.score(sequences)


class ScorerGroup:
    actor_class = ScorerActor  # the actors' body (a test may run a subclass)

    def __init__(self, spec: ScorerSpec):
        """spec: everything the group and its actors are built with."""
        import ray

        self.spec = spec
        opts = dict(max_restarts=spec.max_restarts, max_task_retries=0,
                    runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        if spec.device == "cuda":
            opts["num_gpus"] = spec.gpus_per_actor
        self._check_placement()
        cls = ray.remote(num_cpus=spec.cpus_per_actor, **opts)(self.actor_class)
        self.actors = [cls.remote(spec.model_path, spec.dtype, spec.batch_tokens, spec.kernels, spec.device)
                       for _ in range(spec.num_scorers)]
        try:
            facts = [self._ready(i) for i in range(spec.num_scorers)]  # surfaces a load error here
        except RuntimeError:
            self.shutdown()
            raise
        self.vocab_size = facts[0]["vocab_size"]
        log.info("%d reward model scorer(s) ready on %s", spec.num_scorers, ", ".join(f["device"] for f in facts))
        self.restarts = 0  # over the run, all actors
        self.actor_restarts = [0] * spec.num_scorers

    @classmethod
    def from_config(cls, cfg) -> ScorerGroup:
        """The run's scorers from the validated config (duck-typed: reward.model, cluster,
        model.dtype, kernels)."""
        m, c = cfg.reward.model, cfg.cluster
        device = m.resolved_device(c.device)
        return cls(ScorerSpec(model_path=str(m.path), num_scorers=m.num_scorers, device=device,
                              gpus_per_actor=c.gpus_per_actor("scorer"), cpus_per_actor=c.cpus_per_actor(),
                              dtype=cfg.model.dtype, kernels=cfg.kernels, batch_tokens=m.batch_tokens,
                              deadline_s=m.deadline_s, deadline_tokens_per_s=m.deadline_tokens_per_s,
                              max_restarts=m.max_restarts))

    def _check_placement(self) -> None:
        """Reserve what the actors will ask for, at most deadline_s, then let it go: a
        cluster that cannot give them their CPUs or GPUs raises PlacementTimeout naming the
        resource instead of leaving the actors pending forever (sampler/group.py)."""
        from rlhf_exact.runtime.deadline import probe_placement

        s = self.spec
        bundle = {"CPU": s.cpus_per_actor} | ({"GPU": s.gpus_per_actor} if s.device == "cuda" else {})
        probe_placement(f"{s.num_scorers} reward model scorer(s)", bundle, s.num_scorers, s.deadline_s,
                        "reward.model.num_scorers, cluster.num_cpus/num_gpus, reward.model.deadline_s")

    def score(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores [B] fp32 of token-id sequences (prompt + completion), in the input order;
        ValueError naming a sequence the model cannot score (none is sent then). A scorer
        that dies or misses its deadline is restarted and its share scored again (module
        docstring)."""
        check_sequences(sequences, self.vocab_size)
        parts = dict(enumerate(shares(len(sequences), len(self.actors))))
        out = torch.empty(len(sequences), dtype=torch.float32)
        pending = [i for i, share in parts.items() if share]
        for attempt in range(self.spec.max_restarts + 1):
            for i in pending if attempt else ():
                self._revive(i)
            sent = time.monotonic()
            calls = {i: (self.actors[i].score.remote([sequences[j] for j in parts[i]]),
                         self.call_deadline([sequences[j] for j in parts[i]])) for i in pending}
            failed = []
            for i, (ref, seconds) in calls.items():
                scores = self._result(i, ref, sent + seconds, seconds)
                if scores is None:
                    failed.append(i)
                else:
                    out[parts[i]] = scores
            if not failed:
                return out
            pending = failed
        seconds = max(calls[i][1] for i in failed)
        raise RuntimeError(f"reward model scorer actor(s) {failed}: score died or gave no result within its deadline "
                           f"(the last {seconds:.0f} s) {self.spec.max_restarts + 1} times "
                           f"(reward.model.max_restarts={self.spec.max_restarts}); the run stops")

    def call_deadline(self, sequences: Sequence[Sequence[int]]) -> float:
        """Seconds a score call of these sequences may take (module docstring)."""
        return deadline(self.spec.deadline_s, sum(len(s) for s in sequences), self.spec.deadline_tokens_per_s)

    def _result(self, i: int, ref, end: float, seconds: float) -> torch.Tensor | None:
        """Scorer i's scores by monotonic time `end`, or None when it died or hung (then
        killed: Ray restarts it). An error raised inside the actor is re-raised naming it."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:  # each deadline counts from the submission: the actors score at once
            return ray.get(ref, timeout=max(0.0, end - time.monotonic()))
        except RayActorError as e:
            log.warning("reward model scorer %d died during score (%s); waiting for Ray to restart it", i,
                        type(e).__name__)
        except GetTimeoutError:
            log.warning("reward model scorer %d gave no result within its deadline of %.0f s; restarting it", i,
                        seconds)
            ray.kill(self.actors[i], no_restart=False)
        except RayTaskError as e:
            cause = e.cause if e.cause is not None else e
            raise RuntimeError(f"reward model scorer {i}: score raised {type(cause).__name__}: {cause}") from e
        return None

    def _revive(self, i: int) -> None:
        """Scorer i died or was killed: count its restart (Ray's budget is per actor, over
        the run) and wait until Ray has restarted it."""
        self.restarts += 1
        self.actor_restarts[i] += 1
        if self.actor_restarts[i] > self.spec.max_restarts:
            raise RuntimeError(f"reward model scorer {i} died or missed its deadline {self.actor_restarts[i]} times in "
                               f"this run: its reward.model.max_restarts={self.spec.max_restarts} restarts are used "
                               f"up; the run stops")
        self._ready(i)

    def _ready(self, i: int) -> dict:
        """Scorer i's facts (ScorerActor.ready) once it is up, waiting out a restart by Ray;
        RuntimeError naming it when its constructor failed (the model did not load) or it
        is not up within the start deadline (start_deadline_s, else deadline_s)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        limit, name = ((self.spec.deadline_s, "reward.model.deadline_s") if self.spec.start_deadline_s is None
                       else (self.spec.start_deadline_s, "its start deadline"))
        end = time.monotonic() + limit
        while True:
            try:
                return ray.get(self.actors[i].ready.remote(), timeout=max(0.0, end - time.monotonic()))
            except (RayActorError, GetTimeoutError) as e:
                if isinstance(e, RayActorError) and e.actor_init_failed:
                    raise RuntimeError(f"reward model scorer {i} failed to start: {e}") from None
                if time.monotonic() >= end:
                    raise RuntimeError(f"reward model scorer {i} did not start (or restart) within {name}={limit:g} s: "
                                       f"{type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''}") from e
                time.sleep(0.5)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
