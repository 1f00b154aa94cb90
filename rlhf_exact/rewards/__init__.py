"""Reward functions, pluggable by name.

Signature of every reward (one for all, so text and token-level tasks mix):

    fn(completion_text: str, completion_ids: Sequence[int], sample: Mapping) -> float

  completion_text: the decoded completion; completion_ids: its token ids (the stop
  token included when the sampler kept it); sample: the prompt's dataset row (e.g.
  "answer"; see rlhf_exact.data). Returns a finite float.

Registered: gsm8k (final answer correct, via math_verify), format (a "#### <number>"
or \\boxed{} marker present), synthetic (fraction of tokens in the row's target set).

User rewards come from the config, no fork needed:
  - an import path as the name: `reward.functions=[{name: my_pkg.rewards:score}]`
    (module `my_pkg.rewards`, attribute `score`);
  - or a module listed in `run.imports=[my_pkg.rewards]` whose functions carry
    `@register_reward("score")`, then `reward.functions=[{name: score}]`.
`resolve_rewards` does both; the entry point calls it at config time, so a typo stops
the run before anything starts.

A reward may be `async def` (a sandbox, a remote judge): the samples of a step are then
awaited concurrently, each within `timeout_s` (past it the sample's reward is an error,
handled by `on_error` like a raise). A plain function runs to completion.

`compute_rewards` combines several with weights and decides what a failing reward does
(see there); `compute_reward_terms` also returns each function's own value per sample
(the loop's reward/<name>_mean metrics).
"""
from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlhf_exact.imports import import_object

from .gsm8k import format_reward, gsm8k_reward
from .synthetic import synthetic_reward

RewardFn = Callable[[str, Sequence[int], Mapping[str, Any]], float]
REWARDS: dict[str, RewardFn] = {"gsm8k": gsm8k_reward, "format": format_reward, "synthetic": synthetic_reward}
ON_ERROR = ("skip", "stop")


class RewardError(RuntimeError):
    """A reward function failed on a sample with reward.on_error=stop; the message names
    the reward, the sample and its row, __cause__ is the function's exception."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward to REWARDS under `name` (a duplicate name is an error)."""
    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name]!r})")
        REWARDS[name] = fn
        return fn
    return add


def import_reward_modules(modules: Sequence[str]) -> None:
    """Import each module (run.imports), so its @register_reward functions are in REWARDS.
    ValueError naming the module when one cannot be imported."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as e:  # any import failure of user code is a config error
            raise ValueError(f"run.imports[{i}]={module!r} cannot be imported: {type(e).__name__}: {e}") from e


def _import_path(name: str) -> RewardFn:
    fn = import_object(name, "reward", "function")
    if not callable(fn):
        raise ValueError(f"reward {name!r} is a {type(fn).__name__}, not a function")
    return fn


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`, or the function at import path 'pkg.module:fn';
    ValueError listing the valid names otherwise."""
    if ":" in name:
        return _import_path(name)
    if name not in REWARDS:
        close = difflib.get_close_matches(name, REWARDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown reward {name!r} (valid: {', '.join(sorted(REWARDS))}){hint}")
    return REWARDS[name]


def resolve_rewards(names: Sequence[str], imports: Sequence[str] = ()) -> list[RewardFn]:
    """The functions behind reward names (after importing `imports`); ValueError naming
    the first that does not resolve."""
    import_reward_modules(imports)
    return [get_reward(name) for name in names]


async def _await_all(fn, args: list[tuple], timeout_s: float) -> list:
    async def one(a):
        return await asyncio.wait_for(fn(*a), timeout_s)

    return await asyncio.gather(*(one(a) for a in args), return_exceptions=True)


def _column(fn, args: list[tuple], timeout_s: float) -> list:
    """fn over every sample: values, or the exception a sample raised."""
    if inspect.iscoroutinefunction(fn):
        out = asyncio.run(_await_all(fn, args, timeout_s))
        return [TimeoutError(f"no result within reward.timeout_s={timeout_s:g} s")
                if isinstance(v, (asyncio.TimeoutError, TimeoutError)) else v for v in out]
    col = []
    for a in args:
        try:
            col.append(fn(*a))
        except Exception as e:  # noqa: BLE001 - any failure of user reward code is reported per sample
            col.append(e)
    return col


def compute_rewards(names_weights: Sequence[tuple[str, float]], completions: Sequence[str],
                    completion_ids: Sequence[Sequence[int]], samples: Sequence[Mapping[str, Any]],
                    on_error: str = "stop", timeout_s: float = 60.0) -> tuple[list[float], list[str | None]]:
    """Weighted sum of rewards per completion: r_i = sum_k w_k * fn_k(text_i, ids_i, sample_i).

    samples[i] is the row of completion i's prompt (repeat it per group member).
    Names are registered names or import paths (see get_reward). An async reward gets
    timeout_s seconds per sample, all samples awaited together.
    A reward that raises, returns a non-finite value or times out:
      on_error="stop": RewardError naming the reward, the completion index, its row and
        the error (the reward's own exception is its __cause__);
      on_error="skip": that completion has no reward: rewards[i] is NaN (not a partial
        sum), errors[i] holds the message; the loop drops the sample from its group
        (algo/rollout.py) and counts it. errors[i] is None for completions without error.
    Returns (rewards [len(completions)] floats, errors [len(completions)]).
    compute_reward_terms gives each function's value too.
    """
    rewards, errors, _ = compute_reward_terms(names_weights, completions, completion_ids, samples, on_error,
                                              timeout_s)
    return rewards, errors


def compute_reward_terms(names_weights: Sequence[tuple[str, float]], completions: Sequence[str],
                         completion_ids: Sequence[Sequence[int]], samples: Sequence[Mapping[str, Any]],
                         on_error: str = "stop", timeout_s: float = 60.0
                         ) -> tuple[list[float], list[str | None], list[dict[str, float]]]:
    """compute_rewards' (rewards, errors), and per completion each function's own value
    (unweighted), by name: values[i][name], NaN where that function failed on completion
    i (then errors[i] names the first function that failed). The functions run once."""
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

    args = list(zip(completions, completion_ids, samples))
    columns = [(name, weight, _column(fn, args, timeout_s)) for name, weight, fn in fns]
    rewards: list[float] = []
    errors: list[str | None] = []
    values: list[dict[str, float]] = []
    for i, (_, _, sample) in enumerate(args):
        total, error, own = 0.0, None, {}
        for name, weight, col in columns:
            try:
                if isinstance(col[i], BaseException):
                    raise col[i]
                value = float(col[i])
                if not math.isfinite(value):
                    raise ValueError(f"returned a non-finite value {value}")
            except Exception as e:  # any failure of user reward code is reported per sample
                own[name] = math.nan
                if error is None:
                    where = f" (row {sample['row_id']})" if isinstance(sample, Mapping) and "row_id" in sample else ""
                    error = f"reward {name!r} failed on sample {i}{where}: {type(e).__name__}: {e}"
                    if on_error == "stop":
                        raise RewardError(error) from e
                continue
            own[name] = value
            total += weight * value
        rewards.append(math.nan if error else total)
        errors.append(error)
        values.append(own)
    return rewards, errors, values


__all__ = ["ON_ERROR", "REWARDS", "RewardError", "RewardFn", "compute_reward_terms", "compute_rewards",
           "format_reward", "get_reward", "gsm8k_reward", "import_reward_modules", "register_reward", "resolve_rewards",
           "synthetic_reward"]
