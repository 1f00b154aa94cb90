"""The records that cross component boundaries: what the loop hands the sampler group
and the trainer group, and what they hand back.

    prompts --SamplerGroup.sample--> Episode (prompt, completion, sampler logprobs,
        finish reason)  --algo.rollout.score--> Episode with reward, advantage, kept
    Episode --> TrainSeq (+ old / reference logprobs, TIS weights)
        --TrainerGroup.logprobs--> [L] logprobs per sequence
        --TrainerGroup.train_minibatch(seqs, LossNorm)--> MinibatchResult

Per-token fields are tensors: token ids int64 [P] / [L], logprobs and weights fp32 [L]
(L = completion length; with a loss mask, a multi-turn episode's, over the masked
tokens). Records are frozen; a phase that adds to one returns a new one
(`dataclasses.replace`). This module imports torch only, so the trainer ranks, the
sampler actors and the multi-GPU check can all use it.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Episode:
    """One sampled completion of one prompt, and what the step learned about it.
    A step's episodes are group-major: `group_size` consecutive episodes per prompt."""

    group: int  # index of the prompt within the step (the group the advantage is relative to)
    prompt: torch.Tensor  # [P] int64 prompt token ids
    completion: torch.Tensor  # [L] int64 generated token ids
    sampler_logprobs: torch.Tensor  # [L] fp32, the sampler's logprob of each generated token
    finish_reason: str  # "stop" (EOS or a stop token) or "length"; a multi-turn episode: "done",
    # "max_turns" or "max_tokens" (envs/episode.py; failed episodes are not trained on)
    reward: float = 0.0  # total weighted reward (NaN for a completion whose reward failed, on_error=skip)
    reward_error: str | None = None  # why a reward function failed on it (on_error=skip), else None
    model_score: float | None = None  # the reward model's score of prompt + completion (unweighted; in
    # `reward` with reward.model.weight), computed once per step; None: no reward model
    reward_values: dict[str, float] | None = None  # each reward function's own value (unweighted), by its
    # reward.functions name (NaN where it failed); None: not scored yet. Metrics only: `reward` is the total
    advantage: float = 0.0  # group-relative advantage (every token of the completion gets it)
    kept: bool = True  # False: not trained on (its reward failed, or its group was dropped by the
    # equal-reward filter)
    # Multi-turn episodes (rlhf_exact/envs): the completion is every token after the first
    # prompt, the model's turns and the environment's observations in order.
    model_mask: torch.Tensor | None = None  # [L] bool: tokens the sampler generated; sampler_logprobs then
    # has model_mask.sum() entries (those tokens' logprobs, in order); None: every token (single turn)
    loss_mask: torch.Tensor | None = None  # [L] bool: tokens the loss covers (the model's, and observations
    # an environment marked trained); None: every token
    turns: int = 1  # model turns
    tool_errors: int = 0  # turns whose tool call failed

    @property
    def num_tokens(self) -> int:
        """Prompt + completion tokens: what the trainer packs for it."""
        return self.prompt.numel() + self.completion.numel()

    @property
    def num_loss_tokens(self) -> int:
        """Completion tokens the loss covers."""
        return self.completion.numel() if self.loss_mask is None else int(self.loss_mask.sum())

    def model_in_loss(self) -> torch.Tensor | None:
        """[num_loss_tokens] bool: which of the loss tokens the sampler generated (those with
        a sampler logprob); None when all of them are (single turn, or no trained
        observation)."""
        if self.loss_mask is None or self.model_mask is None:
            return None
        sel = self.model_mask[self.loss_mask]
        return None if bool(sel.all()) else sel


@dataclasses.dataclass(frozen=True)
class TrainSeq:
    """One sequence for the trainer: tokens and, for an update, its per-token targets."""

    prompt: torch.Tensor  # [P] int64
    completion: torch.Tensor  # [L] int64; the trainer computes the logprobs of these tokens
    old_logprobs: torch.Tensor | None = None  # [L] fp32, the PPO ratio's denominator (update only)
    advantage: float = 0.0  # the sequence's advantage (update only)
    tis: torch.Tensor | None = None  # [L] fp32 truncated importance weights (kernels=default + TIS), else None
    ref_logprobs: torch.Tensor | None = None  # [L] fp32 reference-policy logprobs (kl_coef > 0), else None
    loss_mask: torch.Tensor | None = None  # [L] bool: the completion tokens whose logprobs are returned and
    # trained on (multi-turn: not the observations); the per-token fields above then have loss_mask.sum()
    # entries. None: every completion token

    @property
    def num_tokens(self) -> int:
        return self.prompt.numel() + self.completion.numel()


@dataclasses.dataclass(frozen=True)
class LossNorm:
    """The WHOLE minibatch's counts, given to every rank, so that the per-micro-batch
    losses of all ranks sum to the minibatch loss (algo/grpo.py `token_weights`)."""

    num_seqs: int  # sequences of the minibatch (all ranks)
    aggregation: str  # "token_mean" | "seq_mean_token_mean" | "seq_mean_token_sum"
    loss_scale_tokens: int | None = None  # token_mean: the minibatch's completion tokens; seq_mean_token_sum:
    # the constant L (max response length); seq_mean_token_mean: unused


@dataclasses.dataclass
class MinibatchResult:
    """One optimizer step over a minibatch: sums over its real (not padding) tokens, and
    the logprobs the training forward computed, per sequence in the order given."""

    loss: float = 0.0  # sum of the micro-batch losses (= the minibatch loss)
    clipped_tokens: float = 0.0  # tokens whose ratio was clipped
    tokens: float = 0.0  # completion tokens
    kl: float = 0.0  # sum over tokens of the KL-to-reference estimate (kl_coef > 0)
    entropy: float = 0.0  # sum over tokens of the policy entropy (entropy_coef > 0)
    grad_norm: float = 0.0  # global gradient L2 norm before clipping
    nonfinite_ranks: int = 0  # ranks whose loss or gradient was not finite (one rank's result: 0 or 1);
    # merged, 0 or every rank: the step was applied on every rank or on none
    forward_logprobs: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per sequence [L] fp32

    @property
    def nonfinite(self) -> bool:
        """The step was not applied: a loss or gradient was not finite."""
        return self.nonfinite_ranks > 0

    @staticmethod
    def merge(ranks: list[MinibatchResult], forward_logprobs: list[torch.Tensor]) -> MinibatchResult:
        """The group's result from its ranks' (sums added in rank order; the gradient norm is
        global, so every rank holds the same one). RuntimeError when some ranks skipped the
        step and others applied it: their FSDP shards no longer belong to one model."""
        skipped = [i for i, r in enumerate(ranks) if r.nonfinite]
        if skipped and len(skipped) != len(ranks):
            raise RuntimeError(f"trainer ranks disagree about a non-finite step: ranks {skipped} skipped it, the "
                               f"other {len(ranks) - len(skipped)} of {len(ranks)} applied it (grad norms "
                               f"{[r.grad_norm for r in ranks]}); the model's shards are out of step")
        total = MinibatchResult(grad_norm=ranks[0].grad_norm, nonfinite_ranks=sum(r.nonfinite_ranks for r in ranks),
                                forward_logprobs=forward_logprobs)
        for r in ranks:
            total.loss += r.loss
            total.clipped_tokens += r.clipped_tokens
            total.tokens += r.tokens
            total.kl += r.kl
            total.entropy += r.entropy
        return total


@dataclasses.dataclass(frozen=True)
class SharedWeights:
    """The policy's weights in one flat buffer on the trainer's GPU, shared with the
    samplers' engines through a CUDA IPC handle instead of being copied through the host
    (cluster.weight_sync=cuda_ipc; trainer/worker.py `share_weights`). The trainer keeps the
    buffer, refilled in place at every sync, so the handle stays valid until the next one
    (a restarted sampler is sent the same record)."""

    handle: bytes  # pickled torch.multiprocessing.reductions.reduce_tensor(buffer): opens the buffer
    # in another process on the same node
    layout: tuple[tuple[str, tuple[int, ...], int], ...]  # (HF name, shape, element offset) per tensor
    dtype: str  # the buffer's (and every tensor's) dtype, "bfloat16" usually

    @classmethod
    def of(cls, buffer: torch.Tensor, layout, dtype: str) -> SharedWeights:
        """The record of a flat CUDA `buffer` holding the tensors of `layout`. The caller
        keeps `buffer` alive (and unchanged) until every engine has loaded it."""
        import pickle

        from torch.multiprocessing.reductions import reduce_tensor

        return cls(handle=pickle.dumps(reduce_tensor(buffer)), layout=tuple(layout), dtype=dtype)

    @staticmethod
    def pack(tensors, device: str = "cuda") -> tuple[SharedWeights, torch.Tensor]:
        """(record, buffer) of HF-named tensors of one dtype copied into one flat buffer."""
        items = list(tensors.items())
        dtypes = {t.dtype for _, t in items}
        if len(dtypes) != 1:
            raise ValueError(f"SharedWeights.pack: one dtype per buffer, got {sorted(map(str, dtypes))}")
        layout, total = [], 0
        for name, t in items:
            layout.append((name, tuple(t.shape), total))
            total += t.numel()
        buf = torch.empty(total, dtype=dtypes.pop(), device=device)
        for (_, _, offset), (_, t) in zip(layout, items):
            buf[offset:offset + t.numel()].copy_(t.reshape(-1))
        torch.cuda.synchronize(buf.device)
        return SharedWeights.of(buf, layout, str(buf.dtype).removeprefix("torch.")), buf

    @property
    def nbytes(self) -> int:
        size = torch.empty((), dtype=getattr(torch, self.dtype)).element_size()
        return size * sum(_numel(shape) for _, shape, _ in self.layout)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One preference pair for reward-model training: the prompt's token ids and two
    completions, the chosen (preferred) one and the rejected one. The model scores
    prompt + chosen and prompt + rejected."""

    prompt: torch.Tensor  # [P] int64
    chosen: torch.Tensor  # [C] int64
    rejected: torch.Tensor  # [R] int64

    @property
    def num_tokens(self) -> int:
        """Tokens of both scored sequences (what a micro-batch holds)."""
        return 2 * self.prompt.numel() + self.chosen.numel() + self.rejected.numel()

    def sequences(self) -> tuple[list[int], list[int]]:
        p = self.prompt.tolist()
        return p + self.chosen.tolist(), p + self.rejected.tolist()


@dataclasses.dataclass
class PairResult:
    """One optimizer step of the reward model over a minibatch of pairs: sums over its
    real pairs, and each pair's (r_chosen, r_rejected) from the training forward."""

    loss: float = 0.0  # sum of the micro-batch Bradley-Terry losses (= the minibatch mean loss)
    grad_norm: float = 0.0  # global gradient L2 norm before clipping
    nonfinite_ranks: int = 0  # as MinibatchResult.nonfinite_ranks
    scores: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per pair [2] fp32: chosen, rejected

    @property
    def nonfinite(self) -> bool:
        return self.nonfinite_ranks > 0

    @staticmethod
    def merge(ranks: list[PairResult], scores: list[torch.Tensor]) -> PairResult:
        """The group's result from its ranks' (as MinibatchResult.merge)."""
        skipped = [i for i, r in enumerate(ranks) if r.nonfinite]
        if skipped and len(skipped) != len(ranks):
            raise RuntimeError(f"trainer ranks disagree about a non-finite step: ranks {skipped} skipped it, the "
                               f"others applied it; the model's shards are out of step")
        return PairResult(loss=sum(r.loss for r in ranks), grad_norm=ranks[0].grad_norm,
                          nonfinite_ranks=len(skipped), scores=scores)


@dataclasses.dataclass(frozen=True)
class HostTensors:
    """Named CPU tensors as they cross a Ray call (a checkpoint's state, a restore, the
    gathered weights). Each tensor travels as its bytes in a numpy uint8 array, which Ray
    serializes out of band: one copy into the object store, and the receiver reads it in
    place. A pickled torch tensor instead goes through pickle's byte stream; 3.8 GB of
    fp32 state took 35.6 s that way against 3.7 s as arrays (2-core CPU machine, Ray
    2.60). Bits are carried as they are, so nothing about exactness changes."""

    arrays: dict[str, object]  # name -> numpy uint8 [nbytes], the tensor's bytes
    specs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (torch dtype name, shape)

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor]) -> HostTensors:
        arrays, specs = {}, {}
        for name, t in tensors.items():
            t = t.detach().to("cpu").contiguous()
            arrays[name] = t.reshape(-1).view(torch.uint8).numpy()  # 0-dim and bool tensors too
            specs[name] = (str(t.dtype).removeprefix("torch."), tuple(t.shape))
        return cls(arrays, specs)

    def tensors(self, writable: bool = False) -> dict[str, torch.Tensor]:
        """The tensors back. writable=False: views of the received buffers, which in a Ray
        receiver are the object store's read-only memory (read them, copy from them; an
        in-place write would fault); writable=True: copies."""
        import warnings

        out = {}
        with warnings.catch_warnings():  # the read-only case is the point, documented above
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, a in self.arrays.items():
                dtype, shape = self.specs[name]
                if a.size == 0:  # numpy's empty array has no strides a dtype view accepts
                    out[name] = torch.empty(shape, dtype=getattr(torch, dtype))
                    continue
                t = torch.from_numpy(a).view(getattr(torch, dtype)).reshape(shape)
                out[name] = t.clone() if writable else t
        return out
