"""Bradley-Terry reward-model objective on preference pairs (Ouyang et al. 2022, eq. 1;
as in TRL's RewardTrainer and OpenRLHF's PairWiseLoss, without their optional margin
term): the probability that the chosen completion is preferred is
sigmoid(r_chosen - r_rejected), and the loss is its negative log-likelihood.

Pure tensor functions, tested on CPU with hand-computed values (tests/algo/test_preference.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """sum_i -logsigmoid(r_chosen[i] - r_rejected[i]) / num_pairs, in fp32.

    r_chosen, r_rejected: [P] scores of P pairs (any float dtype); num_pairs: the whole
    minibatch's pair count, so micro-batch losses of every rank sum to the minibatch mean.
    Returns a scalar."""
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"bradley_terry_loss: r_chosen {tuple(r_chosen.shape)} and r_rejected "
                         f"{tuple(r_rejected.shape)} must be the same [P]")
    if num_pairs < 1:
        raise ValueError(f"bradley_terry_loss: num_pairs must be >= 1, got {num_pairs}")
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).sum() / num_pairs


def preference_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """accuracy: the fraction of pairs with r_chosen > r_rejected (a tie counts as wrong);
    margin: the mean of r_chosen - r_rejected. [P], [P] -> floats (NaN for P = 0)."""
    diff = r_chosen.float() - r_rejected.float()
    if diff.numel() == 0:
        return {"accuracy": float("nan"), "margin": float("nan")}
    return {"accuracy": float((diff > 0).float().mean()), "margin": float(diff.mean())}
