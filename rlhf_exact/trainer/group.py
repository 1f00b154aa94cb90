"""The FSDP2 trainer group as Ray actors: `world_size` `TrainerWorker` ranks in one
placement group, called together (every FSDP2 collective needs every rank). The group
plans which rank computes which sequences (trainer/plan.py) and puts the results back
in sequence order, so its caller speaks in sequences, not ranks.

    trainer = TrainerGroup.from_config(cfg, model_path)
    logprobs = trainer.logprobs(seqs)                  # [L] fp32 per TrainSeq, in order
    result = trainer.train_minibatch(seqs, LossNorm(len(seqs), "token_mean", tokens))
    lr = trainer.end_step()
    weights = trainer.full_weights("bfloat16")         # HF-named tensors (rank 0's)

The twin of sampler/group.py. Each rank selects its own kernels (exact or stock) from
the spec before its process group starts (worker.py). Ray is imported here only;
worker.py stays plain.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from rlhf_exact.types import LossNorm, MinibatchResult, TrainSeq

from . import plan as planner
from .worker import TrainerSpec, TrainerWorker


class TrainerGroup:
    def __init__(self, spec: TrainerSpec, world_size: int, micro_batch_tokens: int, device: str = "cpu",
                 cpus_per_rank: float = 0.5, gpus_per_rank: float = 1.0):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.world_size, self.micro_batch_tokens = world_size, micro_batch_tokens
        bundle = {"CPU": cpus_per_rank} | ({"GPU": gpus_per_rank} if device == "cuda" else {})
        self.pg = placement_group([bundle] * world_size, strategy="PACK")
        ray.get(self.pg.ready())
        cls = ray.remote(TrainerWorker)
        self.actors = [
            cls.options(num_cpus=cpus_per_rank, num_gpus=gpus_per_rank if device == "cuda" else 0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
                        runtime_env={"env_vars": {"LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}})
            .remote(r, world_size, spec)
            for r in range(world_size)]
        # rank 0 bound its rendezvous port in its constructor: no window for another
        # process to take it (a port picked here and bound there can be gone by then)
        port = self._all(lambda a: (a.master_port if a is self.actors[0] else a.ready).remote())[0]
        self._all(lambda a: a.start.remote(port))  # surfaces a rank's start error here

    @classmethod
    def from_config(cls, cfg, model_path) -> TrainerGroup:
        """The run's trainer: the spec from the algorithm, model and trainer sections."""
        a, c = cfg.algorithm, cfg.cluster
        spec = TrainerSpec(
            model_path=str(model_path), exact=cfg.kernels == "exact", device=c.device,
            param_dtype=cfg.trainer.param_dtype, compute_dtype=cfg.trainer.compute_dtype,
            temperature=cfg.sampling.temperature, lr=a.lr, betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_eps,
            weight_decay=a.weight_decay, max_grad_norm=a.max_grad_norm if a.max_grad_norm > 0 else math.inf,
            warmup_steps=a.warmup_steps, clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
            kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef,
            activation_checkpointing=cfg.model.activation_checkpointing)
        colocated = c.device == "cuda" and c.colocate
        return cls(spec, cfg.trainer.world_size, cfg.trainer.micro_batch_tokens, device=c.device,
                   cpus_per_rank=0.5 if c.device == "cpu" else 1,
                   gpus_per_rank=0.6 if colocated else 1.0)  # + a sampler's 0.4

    # ------------------------------------------------------------------ per sequence

    def logprobs(self, seqs: Sequence[TrainSeq], reference: bool = False) -> list[torch.Tensor]:
        """The trainer's logprobs [L] fp32 of each sequence's completion tokens, from the
        policy or (reference=True) the frozen reference policy."""
        p = self._plan(seqs)
        parts = planner.scatter(p, seqs.__getitem__)
        per_rank = self._all(lambda a, part: a.logprobs.remote(part, reference=reference), parts)
        return planner.gather(p, per_rank, len(seqs))

    def train_minibatch(self, seqs: Sequence[TrainSeq], norm: LossNorm) -> MinibatchResult:
        """One optimizer step over the minibatch `seqs` (every rank steps, or none when the
        loss or a gradient is not finite: `nonfinite`; ranks that disagree raise)."""
        p = self._plan(seqs)
        parts = planner.scatter(p, seqs.__getitem__)
        ranks = self._all(lambda a, part: a.train_minibatch.remote(part, norm), parts)
        return MinibatchResult.merge(ranks, planner.gather(p, [r.forward_logprobs for r in ranks], len(seqs)))

    def _plan(self, seqs: Sequence[TrainSeq]) -> list[list[list[int]]]:
        return planner.plan([s.num_tokens for s in seqs], self.world_size, self.micro_batch_tokens)

    # ------------------------------------------------------------------ whole model

    def end_step(self) -> float:
        """Advance every rank's LR schedule; returns the new learning rate."""
        return self._all(lambda a: a.end_step.remote())[0]

    def full_weights(self, dtype: str | None = "bfloat16") -> dict[str, torch.Tensor]:
        """The policy gathered from every shard: HF-named tensors on CPU, cast to dtype
        (None: the fp32 masters)."""
        return self._all(lambda a: a.full_weights.remote(dtype))[0]

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """The trainer's part of a run checkpoint: (tensors {"model", "optimizer"}, meta)."""
        return self._all(lambda a: a.state.remote())[0]

    def load_state(self, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
        self._all(lambda a: a.load_state.remote(tensors, meta))

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            self._all(lambda a: a.shutdown.remote())
        finally:
            for a in self.actors:
                ray.kill(a)
            remove_placement_group(self.pg)

    # ------------------------------------------------------------------ Ray

    def _all(self, call: Callable, per_rank: list | None = None) -> list:
        """call(actor) on every rank, or call(actor, per_rank[r]) on rank r; the ranks'
        results. When one rank fails, the others are stuck in a collective that will
        never complete: the group is killed and the first error raised."""
        import ray

        refs = [call(a) if per_rank is None else call(a, part) for a, part in
                zip(self.actors, per_rank if per_rank is not None else self.actors)]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception:
                for a in self.actors:
                    ray.kill(a)
                raise
        return ray.get(refs)
