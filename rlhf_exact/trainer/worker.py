"""One FSDP2 trainer rank: the policy (fp32 master weights, bf16 compute), its AdamW
optimizer and LR schedule, the trainer-side logprob recompute, the GRPO update, the
full-weight gather for the sampler, and the rank's part of a run checkpoint. With
`TrainerSpec.architecture` Qwen3ForSequenceClassification the model is a reward model
(models/reward.py) and the update is the Bradley-Terry one over preference pairs
(`train_pairs`, `pair_scores`; rlhf_exact/train_rm.py); the rest is shared.

Plain Python (no Ray): `trainer/group.py` wraps it in Ray actors, and tests can drive
it with torch.multiprocessing. Every rank runs the same sequence of collective calls:
the driver hands each rank a plan with the SAME number of micro-batches (empty slots
are filled with a one-token dummy sequence of weight 0), because each FSDP2 forward
all-gathers parameters from every rank.

Numerics (docs/design.md): `select_kernels` (models/ops.py; for kernels=exact the
exact-mode switch) runs before `init_process_group`, and the model computes with the
op table it returns. The forward in bf16 compute from fp32 masters through
MixedPrecisionPolicy equals the sampler's bf16 model bit for bit (tests/models,
FSDP2 1 vs 2 ranks); gradients are reduced in fp32.

Loss scaling: each micro-batch's `policy_loss` is aggregated with the WHOLE minibatch's
sequence and token counts (from the driver), so the micro-batch losses of all ranks sum
to the minibatch loss. FSDP2 averages gradients over ranks, so each rank scales its
local sum by world_size.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import torch

from rlhf_exact.types import HostTensors, LossNorm, MinibatchResult, PairResult, PreferencePair, SharedWeights, TrainSeq


@dataclasses.dataclass
class TrainerSpec:
    """What every rank needs to build the same trainer (TrainerGroup.from_config builds it)."""

    model_path: str
    exact: bool = True
    device: str = "cpu"
    param_dtype: str = "float32"  # master weights and optimizer state
    compute_dtype: str = "bfloat16"  # FSDP2 mixed precision: the forward's dtype
    temperature: float = 1.0
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    activation_checkpointing: bool = False
    num_threads: int = 1
    architecture: str = "Qwen3ForCausalLM"  # or "Qwen3ForSequenceClassification": a reward model


# Fills an empty micro-batch slot (its loss is multiplied by 0); it carries every
# per-token field a real sequence may carry, so the same loss code runs on it.
DUMMY = TrainSeq(prompt=torch.zeros(1, dtype=torch.int64), completion=torch.zeros(1, dtype=torch.int64),
                 old_logprobs=torch.zeros(1), advantage=0.0, ref_logprobs=torch.zeros(1))
DUMMY_PAIR = PreferencePair(prompt=torch.zeros(1, dtype=torch.int64), chosen=torch.zeros(1, dtype=torch.int64),
                            rejected=torch.ones(1, dtype=torch.int64))


class TrainerWorker:
    """One FSDP2 rank. Two phases, so that no port is ever chosen before it is bound:
    the constructor selects the kernels and, on rank 0, opens the rendezvous store
    (on `master_port`, 0: a port the OS picks and `master_port()` reports); `start(port)`
    joins the process group through that store and builds the model."""

    def __init__(self, rank: int, world_size: int, spec: TrainerSpec, master_port: int = 0):
        self.spec = spec
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(self.spec.num_threads)
        from rlhf_exact.models.ops import select_kernels

        # before the process group: exact mode sets the NCCL variables read at its init;
        # kernels=default: the comparison run on stock torch kernels
        self.ops = select_kernels("exact" if self.spec.exact else "default")
        import torch.distributed as dist

        self._store = dist.TCPStore("127.0.0.1", master_port, world_size, is_master=True,
                                    wait_for_workers=False) if rank == 0 else None

    def master_port(self) -> int:
        """Rank 0's rendezvous port (bound since the constructor)."""
        return self._store.port

    def start(self, master_port: int) -> int:
        """Join the process group (every rank at once) and build policy, reference and
        optimizer; returns the rank."""
        import torch.distributed as dist

        backend = "nccl" if self.spec.device == "cuda" else "gloo"
        if self.spec.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        store = self._store or dist.TCPStore("127.0.0.1", master_port, self.world_size, is_master=False)
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size)
        self.device = torch.device(self.spec.device, torch.cuda.current_device()) \
            if self.spec.device == "cuda" else torch.device("cpu")
        self.model, self.config = self._build_policy()
        self.ref = self._build_reference() if self.spec.kl_coef > 0 else None
        s = self.spec
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, betas=tuple(s.betas), eps=s.eps,
                                           weight_decay=s.weight_decay, foreach=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / (s.warmup_steps + 1)) if s.warmup_steps else 1.0)
        self.steps_done = 0
        return self.rank

    def ready(self) -> int:
        return self.rank

    # ------------------------------------------------------------------ construction

    def _build_policy(self):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from rlhf_exact.models.hf_io import load_model

        s = self.spec
        model, config = load_model(s.model_path, dtype=getattr(torch, s.param_dtype), device=self.device,
                                   activation_checkpointing=s.activation_checkpointing, ops=self.ops,
                                   architecture=s.architecture)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=getattr(torch, self.spec.compute_dtype), reduce_dtype=torch.float32,
                                  cast_forward_inputs=False)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model, config

    def _build_reference(self):
        from rlhf_exact.models.hf_io import load_model

        ref, _ = load_model(self.spec.model_path, dtype=getattr(torch, self.spec.compute_dtype), device=self.device,
                            ops=self.ops)
        ref.requires_grad_(False)
        return ref

    # ------------------------------------------------------------------ forward

    def _forward(self, model, slots: Sequence[TrainSeq], entropy: bool = False):
        """Per slot: the logprobs [L] of its completion tokens, or of those under its loss
        mask (multi-turn: the model's turns), (fp32, grad if enabled);
        with entropy=True also the entropy [L] of each of those tokens' distributions.
        Both come from the same logits and the same `token_logprobs` call, so asking
        for the entropy does not change a logprob bit."""
        from rlhf_exact.models.qwen3 import pack_sequences

        batch = pack_sequences([s.prompt.tolist() + s.completion.tolist() for s in slots]).to(self.device)
        starts = batch.cu_seqlens.tolist()
        spans = [(a + s.prompt.numel() - 1, s.completion.numel()) for a, s in zip(starts, slots)]
        masks = [None if s.loss_mask is None else s.loss_mask.to(self.device) for s in slots]

        def per_slot(t):  # [num_tokens] -> each slot's completion tokens (under its loss mask)
            return [t[a:a + n] if m is None else t[a:a + n][m] for (a, n), m in zip(spans, masks)]

        T = self.spec.temperature
        if not entropy:
            lp = model(batch.input_ids, batch.positions, batch.context, targets=batch.targets, temperature=T)
            return per_slot(lp)
        logits = model(batch.input_ids, batch.positions, batch.context)
        lp = self.ops.token_logprobs(logits, batch.targets, T)  # the op the model itself uses
        lsm = self.ops.log_softmax(logits, T)
        ent = -(lsm.exp() * lsm).sum(-1)
        return per_slot(lp), per_slot(ent)

    @staticmethod
    def _slots(micro: Sequence[TrainSeq]) -> list[TrainSeq]:
        return list(micro) or [DUMMY]

    @torch.no_grad()
    def logprobs(self, plan: Sequence[Sequence[TrainSeq]], reference: bool = False) -> list[list[torch.Tensor]]:
        """plan: micro-batches of sequences (this rank's). Returns, per micro-batch, the
        completion logprobs of each sequence ([L] fp32 on CPU), from the policy or the frozen
        reference."""
        model = self.ref if reference else self.model
        out = []
        for micro in plan:
            res = self._forward(model, self._slots(micro))
            out.append([t.float().cpu() for t in res[:len(micro)]])
        return out

    # ------------------------------------------------------------------ update

    def train_minibatch(self, plan: Sequence[Sequence[TrainSeq]], norm: LossNorm,
                        check_finite: bool = True) -> MinibatchResult:
        """One optimizer step over this rank's micro-batches of one minibatch.

        norm: the WHOLE minibatch's counts (all ranks), so the per-micro-batch
        `policy_loss` values sum to the minibatch loss. Returns this rank's sums and its
        forward's logprobs as `forward_logprobs[micro][k]` (the group puts them back in
        sequence order; the loop reports the first minibatch's importance ratio against
        the sampler from them). A non-finite loss or gradient on any rank skips the
        optimizer step on every rank."""
        from rlhf_exact.algo.grpo import aggregate, kl_penalty, policy_loss

        s = self.spec
        self.model.train()
        out = MinibatchResult()
        how, scale = norm.aggregation, norm.loss_scale_tokens
        for micro in plan:
            slots = self._slots(micro)
            real = len(micro) > 0
            if s.entropy_coef > 0:
                lps, ents = self._forward(self.model, slots, entropy=True)
            else:
                lps, ents = self._forward(self.model, slots), None
            out.forward_logprobs.append([t.detach().float().cpu() for t in lps[:len(micro)]])
            lp = torch.cat(lps)
            dev = lp.device
            seq_ids = torch.cat([torch.full((len(t),), k, dtype=torch.int64) for k, t in enumerate(lps)]).to(dev)
            cat = lambda name: torch.cat([getattr(sl, name) for sl in slots]).to(dev, torch.float32)  # noqa: E731
            adv = torch.tensor([sl.advantage for sl in slots], dtype=torch.float32, device=dev)[seq_ids]
            tis = cat("tis") if slots[0].tis is not None else None
            loss, m = policy_loss(lp, cat("old_logprobs"), adv, seq_ids, norm.num_seqs, s.clip_eps_low,
                                  s.clip_eps_high, how, scale, tis_weights=tis)
            if self.ref is not None and s.kl_coef > 0:
                kl = kl_penalty(lp, cat("ref_logprobs"), s.kl_estimator)
                loss = loss + s.kl_coef * aggregate(kl, seq_ids, norm.num_seqs, how, scale)
                out.kl += float(kl.detach().sum()) if real else 0.0
            if ents is not None:  # entropy bonus: the loss falls as entropy rises
                ent = torch.cat(ents)
                loss = loss - s.entropy_coef * aggregate(ent, seq_ids, norm.num_seqs, how, scale)
                out.entropy += float(ent.detach().sum()) if real else 0.0
            if not real:
                loss = loss * 0.0  # the dummy keeps this rank in step with the others' collectives
            else:
                n = float(lp.numel())
                out.loss += float(loss.detach())
                out.clipped_tokens += m["clip_frac"] * n
                out.tokens += n
            (loss * self.world_size).backward()  # FSDP2 averages gradients over ranks
        out.grad_norm, out.nonfinite_ranks = self._optimizer_step(check_finite)
        return out

    def _optimizer_step(self, check_finite: bool) -> tuple[float, int]:
        """Clip, then step unless a gradient is not finite: (grad norm, 1 if skipped else 0)."""
        # The global gradient norm is one reduction over every rank's shards: it is NaN/inf
        # on every rank as soon as any gradient element is (a non-finite loss gives
        # non-finite gradients, the dummy's too: NaN * 0 = NaN), so all ranks agree.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.max_grad_norm)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        nonfinite = int(not math.isfinite(grad_norm))
        if not (check_finite and nonfinite):  # else the step is not applied
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, nonfinite

    # ------------------------------------------------------------------ reward model

    def _pair_forward(self, slots: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_chosen [P], r_rejected [P]) of the slots' pairs, from one packed forward of
        prompt + chosen and prompt + rejected of every pair (the compute dtype's scores)."""
        from rlhf_exact.models.qwen3 import pack_sequences

        batch = pack_sequences([seq for p in slots for seq in p.sequences()]).to(self.device)
        r = self.model(batch.input_ids, batch.positions, batch.context)
        return r[0::2], r[1::2]

    @torch.no_grad()
    def pair_scores(self, plan: Sequence[Sequence[PreferencePair]]) -> list[list[torch.Tensor]]:
        """Per micro-batch, each pair's [2] fp32 scores (chosen, rejected)."""
        self.model.eval()
        out = []
        for micro in plan:
            rc, rr = self._pair_forward(list(micro) or [DUMMY_PAIR])
            out.append([torch.stack([c, r]).float().cpu() for c, r in zip(rc[:len(micro)], rr[:len(micro)])])
        return out

    def train_pairs(self, plan: Sequence[Sequence[PreferencePair]], num_pairs: int,
                    check_finite: bool = True) -> PairResult:
        """One optimizer step of the reward model on this rank's micro-batches of pairs:
        Bradley-Terry loss (algo/preference.py) over the WHOLE minibatch's num_pairs, so
        the ranks' micro-batch losses sum to the minibatch mean. Returns this rank's loss
        sum and each pair's scores from the training forward."""
        from rlhf_exact.algo.preference import bradley_terry_loss

        self.model.train()
        out = PairResult()
        for micro in plan:
            rc, rr = self._pair_forward(list(micro) or [DUMMY_PAIR])
            loss = bradley_terry_loss(rc, rr, num_pairs)
            if micro:
                out.loss += float(loss.detach())
                out.scores.append([torch.stack([c, r]).detach().float().cpu() for c, r in zip(rc, rr)])
            else:
                loss = loss * 0.0  # the dummy keeps this rank in step with the others' collectives
                out.scores.append([])
            (loss * self.world_size).backward()  # FSDP2 averages gradients over ranks
        out.grad_norm, out.nonfinite_ranks = self._optimizer_step(check_finite)
        return out

    def end_step(self) -> float:
        """After the step's minibatches: advance the LR schedule. Returns the new LR."""
        self.scheduler.step()
        self.steps_done += 1
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------ weights out

    def full_weights(self, dtype: str | None = "bfloat16") -> HostTensors | None:
        """All-gathers the policy; rank 0 returns HF-named tensors on CPU (cast to dtype;
        None keeps the masters' dtype, trainer.param_dtype; lm_head left out when tied), other ranks None. Every
        rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return None
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        cast = getattr(torch, dtype) if dtype else None
        return HostTensors.of({k: (v.to(cast) if cast is not None else v) for k, v in sd.items()})

    def share_weights(self, dtype: str = "bfloat16") -> SharedWeights | None:
        """All-gathers the policy, one tensor at a time, into one flat buffer of `dtype`
        on rank 0's GPU (allocated once, refilled in place at every call; the cast is the
        same round-to-nearest-even as full_weights'), and returns rank 0's CUDA IPC handle
        to it (types.SharedWeights); other ranks None. Every rank must call it. The peak is
        the buffer plus one gathered fp32 tensor."""
        from torch.distributed.tensor import DTensor

        if self.device.type != "cuda":
            raise RuntimeError(f"share_weights needs CUDA (this rank runs on {self.device}); use full_weights")
        cast = getattr(torch, dtype)
        sd = self.model.state_dict()  # FSDP2: DTensor shards under their HF names
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        layout, total = [], 0
        for name, t in sd.items():
            layout.append((name, tuple(t.shape), total))
            total += t.numel()
        buf = getattr(self, "_shared", None)
        if self.rank == 0 and (buf is None or buf.numel() != total or buf.dtype != cast):
            self._shared = buf = None  # free the old one first
            self._shared = buf = torch.empty(total, dtype=cast, device=self.device)
        with torch.no_grad():
            for (_, _, offset), t in zip(layout, sd.values()):
                full = t.full_tensor() if isinstance(t, DTensor) else t
                if self.rank == 0:
                    buf[offset:offset + full.numel()].copy_(full.reshape(-1))
                del full
        if self.rank != 0:
            return None
        torch.cuda.synchronize(self.device)  # the buffer is whole before another process reads it
        return SharedWeights.of(buf, layout, dtype)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> tuple[dict[str, HostTensors], dict] | None:
        """Rank 0: ({"model": fp32 master weights by HF name, "optimizer": AdamW moments},
        meta with the optimizer's JSON part, the LR schedule and the step count). Every
        rank must call it (gathers)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        from rlhf_exact.runtime.checkpoint import flatten_optimizer_state

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(self.model, options=opts)
        osd = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        if self.rank != 0:
            return None
        opt_tensors, opt_meta = flatten_optimizer_state(osd)
        tensors = {"model": HostTensors.of(msd),
                   "optimizer": HostTensors.of({k: torch.as_tensor(v) for k, v in opt_tensors.items()})}
        meta = {"optimizer": opt_meta, "scheduler": self.scheduler.state_dict(), "steps_done": self.steps_done}
        return tensors, meta

    def load_state(self, packed: dict[str, HostTensors], meta: dict) -> None:
        """Inverse of state(); every rank gets the full tensors."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        from rlhf_exact.runtime.checkpoint import unflatten_optimizer_state

        # copies: the optimizer may keep the given tensors as its state and update them in place
        tensors = {group: p.tensors(writable=True) for group, p in packed.items()}
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, tensors["model"], options=opts)
        set_optimizer_state_dict(self.model, self.optimizer,
                                 unflatten_optimizer_state(tensors["optimizer"], meta["optimizer"]), options=opts)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.steps_done = meta["steps_done"]

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
