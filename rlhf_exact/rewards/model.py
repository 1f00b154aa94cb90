"""Scoring rollouts with a learned reward model (reward.model in the config), in the
driver process on CPU.

    scorer = RewardModelScorer.load("runs/rm/final_model", dtype=torch.bfloat16, batch_tokens=4096)
    scores = scorer.score([prompt_ids + completion_ids, ...])   # [B] fp32

The model is models/reward.py's Qwen3RewardModel on the run's op table. With the exact
kernels a sequence's score is a function of its tokens alone, so how the step's
sequences are cut into forwards (batch_tokens, their order, what else is in the step)
changes no bit of any score, and a rerun or a resume scores the same rollout the same
(tests/rewards/test_reward_model_scoring.py checks it with torch.equal). With
kernels=default the stock ops are used, and scores may depend on the batch.

Why the driver and not an actor group of its own: the reward models this scores during
a CPU run are small next to the policy, and a forward without gradients on the step's
sequences is short beside sampling them; a larger model on GPUs wants a scorer group
with deadlines and restarts like the sampler's, which this does not provide yet.
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


class RewardModelScorer:
    """A loaded reward model and how many tokens one forward may take."""

    def __init__(self, model: torch.nn.Module, batch_tokens: int):
        self.model, self.batch_tokens = model, batch_tokens

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype, batch_tokens: int,
             kernels: str = "exact") -> RewardModelScorer:
        """The Qwen3ForSequenceClassification directory at `path` on CPU; ValueError naming
        reward.model.path, the file and the key when it is not a reward model."""
        from rlhf_exact.models.ops import KINDS
        from rlhf_exact.models.reward import load_reward_model

        try:
            model, _ = load_reward_model(path, dtype=dtype, ops=KINDS[kernels])
        except (ValueError, OSError) as e:
            raise ValueError(f"reward.model.path={str(path)!r}: {e}") from None
        return cls(model.eval(), batch_tokens)

    def score(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores [B] fp32 of token-id sequences (prompt + completion), in the input order."""
        from rlhf_exact.models.reward import score_sequences

        out = torch.empty(len(sequences), dtype=torch.float32)
        for idx in token_batches([len(s) for s in sequences], self.batch_tokens):
            out[idx] = score_sequences(self.model, [sequences[i] for i in idx])
        return out
