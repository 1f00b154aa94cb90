"""Reward functions, pluggable by name.

Signature of every reward (one for all, so text and token-level tasks mix):

    fn(completion_text: str, completion_ids: Sequence[int], sample: Mapping) -> float

  completion_text: the decoded completion; completion_ids: its token ids (the stop
  token included when the sampler kept it); sample: the prompt's dataset row (e.g.
  "answer"; see rlhf_exact.data). Returns a finite float.

Registered: gsm8k (final answer correct, via math_verify), format (a "#### <number>"
or \\boxed{} marker present), synthetic (fraction of tokens in the row's target set).
Add one with `@register_reward("name")`. `compute_rewards` combines several with
weights and decides what a failing reward does (see there).
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .gsm8k import format_reward, gsm8k_reward
from .synthetic import synthetic_reward

RewardFn = Callable[[str, Sequence[int], Mapping[str, Any]], float]
REWARDS: dict[str, RewardFn] = {"gsm8k": gsm8k_reward, "format": format_reward, "synthetic": synthetic_reward}
ON_ERROR = ("skip", "stop")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward to REWARDS under `name` (a duplicate name is an error)."""
    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name]!r})")
        REWARDS[name] = fn
        return fn
    return add


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`; ValueError listing the valid names otherwise."""
    if name not in REWARDS:
        close = difflib.get_close_matches(name, REWARDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown reward {name!r} (valid: {', '.join(sorted(REWARDS))}){hint}")
    return REWARDS[name]


def compute_rewards(names_weights: Sequence[tuple[str, float]], completions: Sequence[str],
                    completion_ids: Sequence[Sequence[int]], samples: Sequence[Mapping[str, Any]],
                    on_error: str = "stop") -> tuple[list[float], list[str | None]]:
    """Weighted sum of rewards per completion: r_i = sum_k w_k * fn_k(text_i, ids_i, sample_i).

    samples[i] is the row of completion i's prompt (repeat it per group member).
    A reward that raises or returns a non-finite value:
      on_error="stop": RuntimeError naming the reward, the completion index and the error;
      on_error="skip": that completion's total reward is 0.0 (not a partial sum: a
        broken completion earns nothing) and errors[i] holds the message, so the loop
        can count and log them. errors[i] is None for completions without error.
    Returns (rewards [len(completions)] floats, errors [len(completions)]).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not names_weights:
        raise ValueError("names_weights is empty: give at least one (reward name, weight)")
    if not len(completions) == len(completion_ids) == len(samples):
        raise ValueError(f"completions ({len(completions)}), completion_ids ({len(completion_ids)}) and "
                         f"samples ({len(samples)}) must have the same length")
    fns = []
    for name, weight in names_weights:
        if not math.isfinite(weight):
            raise ValueError(f"weight of reward {name!r} must be finite, got {weight}")
        fns.append((name, float(weight), get_reward(name)))

    rewards: list[float] = []
    errors: list[str | None] = []
    for i, (text, ids, sample) in enumerate(zip(completions, completion_ids, samples)):
        total, error = 0.0, None
        for name, weight, fn in fns:
            try:
                value = float(fn(text, ids, sample))
                if not math.isfinite(value):
                    raise ValueError(f"returned a non-finite value {value}")
            except Exception as e:  # noqa: BLE001 - any failure of user reward code is reported per sample
                where = f" (row {sample['row_id']})" if isinstance(sample, Mapping) and "row_id" in sample else ""
                error = f"reward {name!r} failed on sample {i}{where}: {type(e).__name__}: {e}"
                if on_error == "stop":
                    raise RuntimeError(error) from e
                break
            total += weight * value
        rewards.append(0.0 if error else total)
        errors.append(error)
    return rewards, errors


__all__ = ["ON_ERROR", "REWARDS", "RewardFn", "compute_rewards", "format_reward", "get_reward", "gsm8k_reward",
           "register_reward", "synthetic_reward"]
