"""Scoring rollouts with a learned reward model (reward.model in the config): the scorer
that loads the model and scores token sequences, in the driver process on CPU
(reward.model.num_scorers=0) or inside each actor of a scorer group
(rewards/scorer_group.py, num_scorers >= 1, on CPU or a GPU).

    scorer = RewardModelScorer.load("runs/rm/final_model", dtype=torch.bfloat16, batch_tokens=4096)
    scores = scorer.score([prompt_ids + completion_ids, ...])   # [B] fp32

The model is models/reward.py's Qwen3RewardModel on the run's op table. With the exact
kernels a sequence's score is a function of its tokens alone, so how the step's
sequences are cut into forwards (batch_tokens, their order, what else is in the step,
which scorer actor gets them) changes no bit of any score, and a rerun or a resume scores
the same rollout the same (tests/rewards/test_reward_model_scoring.py checks it with
torch.equal, tests/rewards/test_scorer_group.py across actors, kills and hangs). With
kernels=default the stock ops are used, and scores may depend on the batch.

A sequence that the model cannot score (empty, or a token id outside its vocabulary) is
a ValueError naming the sequence's index, before any forward: the embedding lookup
would otherwise fail with an index error that names neither.

Why the driver is the default: the reward models scored during a CPU run are small next
to the policy, and a forward without gradients on the step's sequences is short beside
sampling them. A larger model, or one on a GPU, wants the scorer group: Ray actors with
per-call deadlines and restarts like the sampler's.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def token_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices of the sequences, in order, cut into batches of at most `batch_tokens`
    tokens (a longer sequence is a batch of its own)."""
    batches, current, used = [], [], 0
    for i, n in enumerate(lengths):
        if current and used + n > batch_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    return batches + [current] if current else batches


def check_sequences(sequences: Sequence[Sequence[int]], vocab_size: int) -> None:
    """ValueError naming the first sequence (its index in `sequences`) that is empty or
    holds a token id outside [0, vocab_size), and the position of that id."""
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"reward model: sequence {i} is empty (prompt + completion must have a token)")
        if min(seq) < 0 or max(seq) >= vocab_size:  # the position is looked for only then
            bad = next(k for k, t in enumerate(seq) if not 0 <= t < vocab_size)
            raise ValueError(f"reward model: sequence {i} has token id {seq[bad]} at position {bad}, outside the "
                             f"reward model's vocabulary [0, {vocab_size})")


class RewardModelScorer:
    """A loaded reward model and how many tokens one forward may take."""

    def __init__(self, model: torch.nn.Module, batch_tokens: int):
        self.model, self.batch_tokens = model, batch_tokens
        self.vocab_size = model.config.vocab_size

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype, batch_tokens: int,
             kernels: str = "exact", device: str = "cpu") -> RewardModelScorer:
        """The Qwen3ForSequenceClassification directory at `path` on `device`; ValueError
        naming reward.model.path, the file and the key when it is not a reward model."""
        from rlhf_exact.models.ops import KINDS
        from rlhf_exact.models.reward import load_reward_model

        try:
            model, _ = load_reward_model(path, dtype=dtype, device=device, ops=KINDS[kernels])
        except (ValueError, OSError) as e:
            raise ValueError(f"reward.model.path={str(path)!r}: {e}") from None
        return cls(model.eval(), batch_tokens)

    def score(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores [B] fp32 (on the CPU) of token-id sequences (prompt + completion), in the
        input order; ValueError naming a sequence it cannot score (module docstring)."""
        from rlhf_exact.models.reward import score_sequences

        check_sequences(sequences, self.vocab_size)
        out = torch.empty(len(sequences), dtype=torch.float32)
        for idx in token_batches([len(s) for s in sequences], self.batch_tokens):
            out[idx] = score_sequences(self.model, [sequences[i] for i in idx])
        return out
