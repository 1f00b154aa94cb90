"""Pure arithmetic over one step's rollout (a group-major list of `Episode`s): the
request seeds, scoring (group advantages and the DAPO equal-reward filter), the
minibatch split, the loss normaliser of a minibatch, and the step's metrics.

No Ray, no engine, no trainer: each function is a few lines over tensors and records,
tested on CPU with hand-computed values (tests/algo/test_rollout.py). The objective
itself (advantages, losses, KL) is grpo.py's.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from rlhf_exact.types import Episode, LossNorm, MinibatchResult

from .grpo import equal_reward_groups, group_advantages, minibatches


def request_seed(run_seed: int, step: int, prompt: int, group_size: int) -> int:
    """Seed of sample 0 of a prompt (sample j uses seed + j): distinct per (step, prompt),
    a function of the config and the step only, so a resumed run draws the same samples."""
    return ((run_seed * 1_000_003 + step) * 65_537 + prompt) * group_size % (2 ** 31 - group_size)


def groups_of(episodes: Sequence[Episode]) -> list[list[int]]:
    """Episode indices per group, groups in order of appearance (each group's episodes
    are consecutive in a step's group-major list)."""
    out: dict[int, list[int]] = {}
    for i, e in enumerate(episodes):
        out.setdefault(e.group, []).append(i)
    return list(out.values())


def _complete(groups: list[list[int]], group_size: int) -> bool:
    return all(len(g) == group_size for g in groups)


def score(episodes: Sequence[Episode], rewards: Sequence[float], errors: Sequence[str | None], group_size: int,
          normalize_std: bool = True, filter_equal_reward_groups: bool = False) -> list[Episode]:
    """The episodes with their reward, reward error, group advantage and `kept` flag:
    False for an episode without a reward (its reward failed, reward.on_error=skip: reward
    NaN; it is left out of its group's mean and std too) and for every episode of a group
    whose rewards are all equal, when filtering. A group may have fewer than group_size
    episodes (multi-turn: an episode whose environment failed was dropped from it): its
    advantages are relative to the episodes it still has."""
    r = torch.tensor([math.nan if err is not None else v for v, err in zip(rewards, errors)], dtype=torch.float32)
    groups = groups_of(episodes)
    if _complete(groups, group_size):
        adv = group_advantages(r, group_size, normalize_std=normalize_std)
        keep = torch.ones(r.numel() // group_size, dtype=torch.bool)
        if filter_equal_reward_groups:
            keep = ~equal_reward_groups(r, group_size)
        kept = [bool(keep[i // group_size]) for i in range(r.numel())]
    else:
        adv, kept = torch.zeros_like(r), [True] * r.numel()
        for g in groups:
            idx = torch.tensor(g)
            adv[idx] = group_advantages(r[idx], len(g), normalize_std=normalize_std)
            if filter_equal_reward_groups and bool(equal_reward_groups(r[idx], len(g))[0]):
                for i in g:
                    kept[i] = False
    return [dataclasses.replace(e, reward=float(r[i]), reward_error=errors[i], advantage=float(adv[i]),
                                kept=kept[i] and errors[i] is None)
            for i, e in enumerate(episodes)]


def minibatch_split(episodes: Sequence[Episode], group_size: int, num_minibatches: int) -> list[list[int]]:
    """Indices of the kept episodes per minibatch, whole groups together, in order (at
    most one minibatch per kept group); [] when no group is kept. Groups smaller than
    group_size (dropped episodes) are split by group count the same way."""
    kept = [i for i, e in enumerate(episodes) if e.kept]
    groups = groups_of([episodes[i] for i in kept])
    if not groups:
        return []
    if _complete(groups, group_size):
        return [[kept[int(k)] for k in m] for m in minibatches(len(kept), min(num_minibatches, len(groups)),
                                                                group_size)]
    chunks = torch.tensor_split(torch.arange(len(groups)), min(num_minibatches, len(groups)))
    return [[kept[k] for g in chunk.tolist() for k in groups[g]] for chunk in chunks]


def loss_norm(episodes: Sequence[Episode], aggregation: str, max_tokens: int) -> LossNorm:
    """The minibatch's normaliser: token_mean divides by its completion tokens (those under
    the loss mask), the seq-means by its sequence count (seq_mean_token_sum also by
    max_tokens, Dr. GRPO's L)."""
    tokens = sum(e.num_loss_tokens for e in episodes)
    return LossNorm(num_seqs=len(episodes), aggregation=aggregation,
                    loss_scale_tokens=tokens if aggregation == "token_mean" else max_tokens)


def ratio_range(logprobs: Sequence[torch.Tensor], sampler_logprobs: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(min, max) over all tokens of the importance ratio exp(logprob - sampler logprob);
    exactly (1.0, 1.0) when the two are bitwise equal."""
    r = torch.cat([torch.exp(a - b) for a, b in zip(logprobs, sampler_logprobs)])
    return float(r.min()), float(r.max())


def rollout_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """reward/* (mean and std over the episodes that have a reward; NaN if none has; and
    per source: reward_source_metrics), response_length/* and the kept-group counts of a
    scored rollout."""
    rewards = torch.tensor([e.reward for e in episodes if e.reward_error is None], dtype=torch.float32)
    lengths = torch.tensor([e.completion.numel() for e in episodes], dtype=torch.float32)
    groups = groups_of(episodes)
    kept = len({e.group for e in episodes if e.kept})
    return {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False)),
            "reward/errors": float(sum(e.reward_error is not None for e in episodes)),
            "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
            "response_length/min": float(lengths.min()),
            "train/groups_kept": float(kept), "train/groups": float(len(groups))} | reward_source_metrics(episodes)


def reward_source_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Where the step's reward came from, unweighted: reward/<name>_mean for each reward
    function (over the episodes where it gave a value, NaN where none did; names in
    order of first appearance in Episode.reward_values), and reward/model_mean and
    reward/model_std over the reward model's scores (Episode.model_score), when it
    scored them. Episodes without values or scores add nothing."""
    out: dict[str, float] = {}
    names = dict.fromkeys(name for e in episodes for name in (e.reward_values or {}))
    for name in names:
        v = torch.tensor([e.reward_values[name] for e in episodes if e.reward_values and name in e.reward_values],
                         dtype=torch.float32)
        finite = v[torch.isfinite(v)]
        out[f"reward/{name}_mean"] = float(finite.mean()) if finite.numel() else math.nan
    s = torch.tensor([e.model_score for e in episodes if e.model_score is not None], dtype=torch.float32)
    if s.numel():
        out |= {"reward/model_mean": float(s.mean()), "reward/model_std": float(s.std(unbiased=False))}
    return out


def update_metrics(updates: Sequence[MinibatchResult], lr: float, kl: bool = False,
                   entropy: bool = False) -> dict[str, float]:
    """train/* over a step's minibatch updates: loss and gradient norm averaged over the
    updates, clip fraction (and KL to the reference, entropy when asked) per token."""
    n = max(1, len(updates))
    tokens = max(sum(u.tokens for u in updates), 1.0)
    out = {"train/loss": sum(u.loss for u in updates) / n,
           "train/clip_frac": sum(u.clipped_tokens for u in updates) / tokens,
           "train/grad_norm": sum(u.grad_norm for u in updates) / n, "train/lr": lr}
    if kl:
        out["train/kl_ref"] = sum(u.kl for u in updates) / tokens
    if entropy:
        out["train/entropy"] = sum(u.entropy for u in updates) / tokens
    return out


def on_loss_tokens(model_values: torch.Tensor, fill: torch.Tensor, model_in_loss: torch.Tensor | None):
    """A per-loss-token tensor: `model_values` at the model's tokens, `fill` at observation
    tokens an environment marked trained (model_in_loss: Episode.model_in_loss())."""
    if model_in_loss is None:
        return model_values
    out = fill.clone()
    out[model_in_loss] = model_values
    return out
