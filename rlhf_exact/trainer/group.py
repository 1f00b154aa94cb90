"""The FSDP2 trainer group as Ray actors: `world_size` `TrainerWorker` ranks in one
placement group, called together (every FSDP2 collective needs every rank). The group
plans which rank computes which sequences (trainer/plan.py) and puts the results back
in sequence order, so its caller speaks in sequences, not ranks.

    trainer = TrainerGroup.from_config(cfg, model_path)
    logprobs = trainer.logprobs(seqs)                  # [L] fp32 per TrainSeq, in order
    result = trainer.train_minibatch(seqs, LossNorm(len(seqs), "token_mean", tokens))
    lr = trainer.end_step()
    weights = trainer.full_weights("bfloat16")         # HF-named tensors (rank 0's)
    shared = trainer.share_weights("bfloat16")         # CUDA: rank 0's buffer, by IPC handle

The twin of sampler/group.py. Each rank selects its own kernels (exact or stock) from
the spec before its process group starts (worker.py). Ray is imported here only;
worker.py stays plain.

Every call has a deadline derived from its work (runtime/deadline.py): deadline_s plus
the most tokens one rank computes at deadline_tokens_per_s (logprobs, train_minibatch),
or plus the bytes it moves at deadline_mb_per_s (start, full_weights, state,
load_state: the fp32 model and Adam's two moments at most). A rank that fails, dies or
misses the deadline leaves the others stuck in a collective: the group kills every rank
and raises (DeadlineExceeded for a deadline, naming the call, the ranks and the
seconds); the loop restarts the group from the newest checkpoint (loop.py). Placing the
ranks has a deadline too, deadline_s: a cluster that cannot give them their CPUs or GPUs
raises PlacementTimeout naming the resource, instead of waiting forever.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from rlhf_exact.runtime.deadline import (MIB, DeadlineExceeded, PlacementTimeout, deadline, placement_message,
                                         tensor_bytes)
from rlhf_exact.types import HostTensors, LossNorm, MinibatchResult, PairResult, PreferencePair, SharedWeights, TrainSeq

from . import plan as planner
from .worker import TrainerSpec, TrainerWorker

SHUTDOWN_S = 30.0  # seconds the ranks get to leave their process group at the end of a run (then killed)


class TrainerGroup:
    worker_class = TrainerWorker  # the ranks' body (a test may run a subclass)

    def __init__(self, spec: TrainerSpec, world_size: int, micro_batch_tokens: int, device: str = "cpu",
                 cpus_per_rank: float = 0.5, gpus_per_rank: float = 1.0, deadline_s: float = 600.0,
                 deadline_tokens_per_s: float = 20.0, deadline_mb_per_s: float = 20.0):
        """deadline_s, deadline_tokens_per_s, deadline_mb_per_s: a call's deadline (module
        docstring)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlhf_exact.models.hf_io import expected_tensors, read_config

        self.world_size, self.micro_batch_tokens = world_size, micro_batch_tokens
        self.deadline_s, self.deadline_tokens_per_s = deadline_s, deadline_tokens_per_s
        self.deadline_bytes_per_s = deadline_mb_per_s * MIB
        # fp32 master weights and Adam's two moments: the most bytes a whole-model call moves
        config = read_config(spec.model_path, spec.architecture)
        params = sum(math.prod(shape) for shape in expected_tensors(config, spec.architecture).values())
        self.state_bytes = 3 * 4 * params
        self.vocab_size = config.vocab_size
        bundle = {"CPU": cpus_per_rank} | ({"GPU": gpus_per_rank} if device == "cuda" else {})
        self.pg = placement_group([bundle] * world_size, strategy="PACK")
        self._placed(bundle)
        cls = ray.remote(self.worker_class)
        self.actors = [
            cls.options(num_cpus=cpus_per_rank, num_gpus=gpus_per_rank if device == "cuda" else 0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
                        runtime_env={"env_vars": {"LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}})
            .remote(r, world_size, spec)
            for r in range(world_size)]
        # rank 0 bound its rendezvous port in its constructor: no window for another
        # process to take it (a port picked here and bound there can be gone by then)
        port = self._all("master_port", lambda a: (a.master_port if a is self.actors[0] else a.ready).remote(),
                         seconds=self.deadline_s)[0]
        self._all("start", lambda a: a.start.remote(port), seconds=self._bytes(self.state_bytes))  # a start error

    @classmethod
    def from_config(cls, cfg, model_path, architecture: str = "Qwen3ForCausalLM") -> TrainerGroup:
        """The run's trainer: the spec from the algorithm, model and trainer sections
        (architecture Qwen3ForSequenceClassification: a reward model, train_rm)."""
        a, c = cfg.algorithm, cfg.cluster
        spec = TrainerSpec(
            model_path=str(model_path), exact=cfg.kernels == "exact", device=c.device,
            param_dtype=cfg.trainer.param_dtype, compute_dtype=cfg.trainer.compute_dtype,
            temperature=cfg.sampling.temperature, lr=a.lr, betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_eps,
            weight_decay=a.weight_decay, max_grad_norm=a.max_grad_norm if a.max_grad_norm > 0 else math.inf,
            warmup_steps=a.warmup_steps, clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
            kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef,
            activation_checkpointing=cfg.model.activation_checkpointing, architecture=architecture)
        t = cfg.trainer
        return cls(spec, t.world_size, t.micro_batch_tokens, device=c.device,
                   cpus_per_rank=c.cpus_per_actor(),
                   gpus_per_rank=c.gpus_per_actor("trainer"),
                   deadline_s=t.deadline_s, deadline_tokens_per_s=t.deadline_tokens_per_s,
                   deadline_mb_per_s=t.deadline_mb_per_s)

    # ------------------------------------------------------------------ per sequence

    def logprobs(self, seqs: Sequence[TrainSeq], reference: bool = False) -> list[torch.Tensor]:
        """The trainer's logprobs [L] fp32 of each sequence's completion tokens, from the
        policy or (reference=True) the frozen reference policy."""
        p = self._plan(seqs)
        parts = planner.scatter(p, seqs.__getitem__)
        per_rank = self._all("logprobs", lambda a, part: a.logprobs.remote(part, reference=reference), parts,
                             seconds=self._tokens(parts))
        return planner.gather(p, per_rank, len(seqs))

    def train_minibatch(self, seqs: Sequence[TrainSeq], norm: LossNorm) -> MinibatchResult:
        """One optimizer step over the minibatch `seqs` (every rank steps, or none when the
        loss or a gradient is not finite: `nonfinite`; ranks that disagree raise)."""
        p = self._plan(seqs)
        parts = planner.scatter(p, seqs.__getitem__)
        ranks = self._all("train_minibatch", lambda a, part: a.train_minibatch.remote(part, norm), parts,
                          seconds=self._tokens(parts))
        return MinibatchResult.merge(ranks, planner.gather(p, [r.forward_logprobs for r in ranks], len(seqs)))

    def pair_scores(self, pairs: Sequence[PreferencePair]) -> list[torch.Tensor]:
        """The reward model's [2] fp32 scores (chosen, rejected) of each pair, in order."""
        p = self._plan(pairs)
        parts = planner.scatter(p, pairs.__getitem__)
        per_rank = self._all("pair_scores", lambda a, part: a.pair_scores.remote(part), parts,
                             seconds=self._tokens(parts))
        return planner.gather(p, per_rank, len(pairs))

    def train_pairs(self, pairs: Sequence[PreferencePair]) -> PairResult:
        """One Bradley-Terry optimizer step of the reward model over the minibatch `pairs`
        (every rank steps, or none: `nonfinite`); scores per pair in order."""
        p = self._plan(pairs)
        parts = planner.scatter(p, pairs.__getitem__)
        ranks = self._all("train_pairs", lambda a, part: a.train_pairs.remote(part, len(pairs)), parts,
                          seconds=self._tokens(parts))
        return PairResult.merge(ranks, planner.gather(p, [r.scores for r in ranks], len(pairs)))

    def _plan(self, seqs: Sequence[TrainSeq] | Sequence[PreferencePair]) -> list[list[list[int]]]:
        check_token_ids(seqs, self.vocab_size)  # before any rank sees a part (a raising rank strands the rest)
        return planner.plan([s.num_tokens for s in seqs], self.world_size, self.micro_batch_tokens)

    def _tokens(self, parts: list) -> float:
        """The deadline of a call over per-rank parts (lists of micro-batches of TrainSeqs):
        the ranks run in step, so the rank with the most tokens sets it."""
        most = max(sum(s.num_tokens for mb in part for s in mb) for part in parts)
        return deadline(self.deadline_s, most, self.deadline_tokens_per_s)

    def _bytes(self, n: int) -> float:
        return deadline(self.deadline_s, n, self.deadline_bytes_per_s)

    # ------------------------------------------------------------------ whole model

    def end_step(self) -> float:
        """Advance every rank's LR schedule; returns the new learning rate."""
        return self._all("end_step", lambda a: a.end_step.remote(), seconds=self.deadline_s)[0]

    def full_weights(self, dtype: str | None = "bfloat16") -> dict[str, torch.Tensor]:
        """The policy gathered from every shard: HF-named tensors on CPU, cast to dtype
        (None: the fp32 masters). Read-only views of what Ray received (types.HostTensors)."""
        return self._all("full_weights", lambda a: a.full_weights.remote(dtype),
                         seconds=self._bytes(self.state_bytes))[0].tensors()

    def share_weights(self, dtype: str = "bfloat16") -> SharedWeights:
        """The policy in rank 0's shared GPU buffer (worker.share_weights): the record a
        colocated sampler opens through CUDA IPC."""
        return self._all("share_weights", lambda a: a.share_weights.remote(dtype),
                         seconds=self._bytes(self.state_bytes // 6))[0]

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """The trainer's part of a run checkpoint: (tensors {"model", "optimizer"}, meta);
        the tensors are read-only views of what Ray received (types.HostTensors)."""
        packed, meta = self._all("state", lambda a: a.state.remote(), seconds=self._bytes(self.state_bytes))[0]
        return {group: p.tensors() for group, p in packed.items()}, meta

    def load_state(self, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
        import ray

        ref = ray.put({group: HostTensors.of(named) for group, named in tensors.items()})  # once for every rank
        self._all("load_state", lambda a: a.load_state.remote(ref, meta), seconds=self._bytes(tensor_bytes(tensors)))

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        try:  # a rank still inside a collective whose peer was interrupted (Ctrl-C reaches the
            # ranks too) answers only when that collective times out: give it SHUTDOWN_S, then kill
            self._all("shutdown", lambda a: a.shutdown.remote(), seconds=min(self.deadline_s, SHUTDOWN_S))
        finally:
            self._kill()
            remove_placement_group(self.pg)

    # ------------------------------------------------------------------ Ray

    def _all(self, name: str, call: Callable, per_rank: list | None = None, *, seconds: float) -> list:
        """call(actor) on every rank, or call(actor, per_rank[r]) on rank r; the ranks'
        results, all within `seconds`. When one rank fails or misses the deadline, the
        others are stuck in a collective that will never complete: the group is killed
        and the first error raised (DeadlineExceeded naming `name`, the ranks, the deadline)."""
        import ray

        refs = [call(a) if per_rank is None else call(a, part) for a, part in
                zip(self.actors, per_rank if per_rank is not None else self.actors)]
        pending, end = list(refs), time.monotonic() + seconds
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, end - time.monotonic()))
            if not done:
                self._kill()
                late = [refs.index(r) for r in pending]
                raise DeadlineExceeded(f"trainer rank(s) {late}: {name} gave no result within its deadline of "
                                       f"{seconds:.1f} s")
            try:
                ray.get(done[0])
            except Exception as e:
                died = _death_behind(e, pending)
                self._kill()
                if died is not None:
                    raise died from e
                raise
        return ray.get(refs)

    def _placed(self, bundle: dict[str, float]) -> None:
        """Wait for the ranks' placement group, at most deadline_s: a cluster without the
        resources leaves it pending forever (preflight checks a local Ray's; this catches a
        shared cluster's)."""
        import ray
        from ray.exceptions import GetTimeoutError
        from ray.util.placement_group import remove_placement_group

        try:
            ray.get(self.pg.ready(), timeout=self.deadline_s)
        except GetTimeoutError:
            remove_placement_group(self.pg)
            raise PlacementTimeout(placement_message(
                f"{self.world_size} trainer rank(s)", bundle, self.world_size, self.deadline_s,
                ray.cluster_resources(), ray.available_resources(),
                "trainer.world_size, cluster.num_cpus/num_gpus, trainer.deadline_s")) from None

    def _kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def check_token_ids(items: Sequence[TrainSeq] | Sequence[PreferencePair], vocab_size: int) -> None:
    """Every token of every item in [0, vocab_size), else a ValueError naming the item,
    the field, the position and the id. On the host, before the call reaches a rank: on
    CUDA an out-of-range id fails the embedding with a device-side assert (the rank's
    CUDA context is lost) and gives a NaN logprob as a target; and one rank raising would
    leave the others waiting in a collective."""
    fields = ("prompt", "chosen", "rejected") if items and isinstance(items[0], PreferencePair) \
        else ("prompt", "completion")
    for i, item in enumerate(items):
        for name in fields:
            t = getattr(item, name)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
                j = int(((t < 0) | (t >= vocab_size)).nonzero()[0])
                raise ValueError(f"trainer: sequence {i} ({name}), position {j}: token id {int(t[j])} outside "
                                 f"the vocabulary [0, {vocab_size})")


def _death_behind(error: Exception, pending: list, wait_s: float = 10.0):
    """When a rank's call fails because a peer's process died (its collective reads a
    reset connection), Ray may report that error before the peer's death. The death
    (RayActorError of another rank's call within wait_s), which the loop restarts from;
    None when `error` is itself one or no other rank died."""
    import ray
    from ray.exceptions import RayActorError

    if isinstance(error, RayActorError):
        return None
    end = time.monotonic() + wait_s
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, end - time.monotonic()))
        if not done:
            return None
        try:
            ray.get(done[0])
        except RayActorError as died:
            return died
        except Exception:  # noqa: BLE001 - another rank's failure of the same collective
            pass
    return None
