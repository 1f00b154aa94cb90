"""Deadlines for calls across an actor boundary. A call that waits forever on a hung
actor (a rank stuck in a collective, a vLLM engine that stopped answering) hangs the
run, so every call the groups make gets a deadline derived from its work: a floor
(scheduling, a slow first call, start-up) plus its work (tokens, bytes) at the slowest
rate that still counts as alive. The rates and floors are config values
(sampler.deadline_*, trainer.deadline_*: docs/training.md).

A call past its deadline is handled by its group like a dead actor: the sampler group
restarts the actor and re-sends the weights (sampler/group.py); the trainer group kills
its ranks and raises `DeadlineExceeded`, which the loop handles like a dead rank
(restart from the newest checkpoint, trainer.max_restarts; loop.py).

    seconds = deadline(cfg.trainer.deadline_s, tokens, cfg.trainer.deadline_tokens_per_s)
    seconds = deadline(cfg.sampler.deadline_s, tensor_bytes(weights), cfg.sampler.deadline_mb_per_s * MIB)
"""
from __future__ import annotations

from collections.abc import Mapping

MIB = 1 << 20


class DeadlineExceeded(RuntimeError):
    """An actor call gave no result within its deadline; the message names the call, the
    actor (or rank) and the deadline."""


class PlacementTimeout(RuntimeError):
    """Ray could not place a group's actors within the deadline: the cluster lacks (or
    others hold) the resources they ask for; the message names the resource."""


def placement_message(what: str, bundle: Mapping[str, float], count: int, seconds: float,
                      total: Mapping[str, float], free: Mapping[str, float], keys: str) -> str:
    """The one line of a PlacementTimeout: `count` actors (`what`) asking for `bundle`
    each were not placed within `seconds`; `total` and `free` are the cluster's resources
    (ray.cluster_resources(), ray.available_resources()); `keys` the config keys that
    set the demand. Names the first resource the actors need more of than the cluster
    has free."""
    short = next((r for r, each in bundle.items() if each * count > free.get(r, 0.0)), next(iter(bundle)))
    return (f"Ray could not place {what} within {seconds:g} s: they need {short} {count} x {bundle[short]:g} = "
            f"{count * bundle[short]:g}, the cluster has {total.get(short, 0.0):g} {short} "
            f"({free.get(short, 0.0):g} free); {keys}")


def deadline(floor_s: float, work: float, rate_per_s: float) -> float:
    """Seconds allowed for `work` units (tokens, bytes) at `rate_per_s` units per second
    on top of `floor_s`: floor_s + work / rate_per_s."""
    if floor_s <= 0 or rate_per_s <= 0 or work < 0:
        raise ValueError(f"deadline: floor_s {floor_s} and rate_per_s {rate_per_s} must be > 0, work {work} >= 0")
    return floor_s + work / rate_per_s


def tensor_bytes(tensors) -> int:
    """Bytes of the tensors in a (nested) mapping of name -> tensor; other values count 0."""
    if isinstance(tensors, Mapping):
        return sum(tensor_bytes(v) for v in tensors.values())
    numel = getattr(tensors, "numel", None)
    return numel() * tensors.element_size() if numel is not None else 0


def probe_placement(what: str, bundle: dict[str, float], count: int, seconds: float, keys: str) -> None:
    """Reserve `count` bundles of what each actor of a group will ask for, at most `seconds`,
    then let them go: a cluster that cannot give them raises PlacementTimeout naming the
    resource (runtime/deadline.placement_message; `keys` the config keys that set the
    demand), instead of leaving the actors pending forever."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group, remove_placement_group

    probe = placement_group([bundle] * count)
    try:
        ray.get(probe.ready(), timeout=seconds)
    except GetTimeoutError:
        raise PlacementTimeout(placement_message(what, bundle, count, seconds, ray.cluster_resources(),
                                                 ray.available_resources(), keys)) from None
    finally:
        remove_placement_group(probe)
