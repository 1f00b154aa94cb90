"""The environment interface: what a multi-turn, tool-using task implements.

An episode alternates model turns and environment observations over ONE growing token
sequence:

    prompt | turn 1 (model) | observation 1 (env) | turn 2 (model) | ... | turn n

    class MyEnv(Environment):
        def start(self, row) -> Start:                          # the first prompt
            return Start(prompt_ids=row["prompt_ids"])
        def step(self, row, turn: Turn, state) -> Observation:  # after every model turn
            return Observation(token_ids=[...], reward=0.0, done=False, state=state)

Token-in, token-out: the environment never re-renders the conversation. It sees the
model's turn as the sampled token ids (and their decoded text, for parsing) and answers
with the token ids to APPEND; the runner builds the next prompt as the previous prompt
+ the turn's ids + the observation's ids, so every sampled token stays exactly the token
the trainer trains on, and the sampler's next request extends its last one (a prefix
cache hit). Re-tokenizing decoded text between turns can merge or split tokens
differently and changes the sequence the logprobs were computed on.

State: `step` receives the row, the turn and the `state` that `start` or the previous
`step` returned, and returns the next state. Environments hold no per-episode state on
`self`, so any process of a worker pool can serve any step; a state must be picklable
when the runner uses worker processes.

An environment instance is built once per process by the registry
(`rlhf_exact.envs.registry.make_env`) with the config's keyword arguments and the run's
tokenizer (a `tokenizers.Tokenizer`, or None), and serves every episode of the run.

Rewards: the episode's reward is the sum of its observations' rewards (per-turn
rewards, or only a final one on the observation that sets done). The step after the
last turn is always taken, also when a limit ends the episode (its token ids are then
not appended), so a final reward is never lost to a limit.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Start:
    """How an episode begins."""

    prompt_ids: Sequence[int]  # the first prompt [P], P >= 1 (never trained on)
    state: Any = None  # handed to the first step


@dataclasses.dataclass(frozen=True)
class Turn:
    """One model turn as the sampler produced it."""

    token_ids: tuple[int, ...]  # the sampled tokens [L] (a final stop token included)
    text: str  # their decoded text (special tokens skipped), for parsing only
    finish_reason: str  # "stop" (a stop token) or "length" (the turn's token limit)
    index: int  # 0 for the first turn


@dataclasses.dataclass(frozen=True)
class Observation:
    """The environment's answer to a turn."""

    token_ids: Sequence[int] = ()  # appended after the turn (ignored once done or at a limit)
    trained: bool = False  # True: the loss covers these tokens too (as if the policy wrote them)
    reward: float = 0.0  # this turn's reward; the episode's is the sum over turns
    done: bool = False  # the episode ends after this turn
    state: Any = None  # handed to the next step
    tool_error: bool = False  # the turn's tool call failed (counted: episode/tool_errors)


class Environment:
    """Base class of environments (module docstring). Subclasses take their config
    keyword arguments after `tokenizer` and implement `start` and `step`."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def start(self, row: Mapping[str, Any]) -> Start:
        """The first prompt of an episode on `row` (a dataset row: "prompt_ids",
        "answer", ...). Default: the row's tokenized prompt."""
        return Start(prompt_ids=list(row["prompt_ids"]))

    def step(self, row: Mapping[str, Any], turn: Turn, state: Any) -> Observation:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """`text` as token ids of the run's tokenizer, special tokens parsed, nothing added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


class MalformedError(ValueError):
    """An environment returned something that is not a valid Start or Observation."""


def _check_ids(what: str, ids, vocab_size: int, nonempty: bool) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise MalformedError(f"{what} must be a sequence of token ids, got {type(ids).__name__}")
    out = list(ids)
    bad = next((t for t in out if not (isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size)),
               None)
    if bad is not None:
        raise MalformedError(f"{what} holds {bad!r}, not a token id in [0, {vocab_size})")
    if nonempty and not out:
        raise MalformedError(f"{what} is empty")
    return out


def check_start(start: Any, vocab_size: int) -> Start:
    """`start` with its ids as a list of ints; MalformedError when it is not a valid Start."""
    if not isinstance(start, Start):
        raise MalformedError(f"start() must return a Start, got {type(start).__name__}")
    return dataclasses.replace(start, prompt_ids=_check_ids("Start.prompt_ids", start.prompt_ids, vocab_size, True))


def check_observation(obs: Any, vocab_size: int) -> Observation:
    """`obs` with its ids as a list of ints and its reward as a float; MalformedError when
    it is not a valid Observation (ids outside the vocabulary, a non-finite reward, ...)."""
    if not isinstance(obs, Observation):
        raise MalformedError(f"step() must return an Observation, got {type(obs).__name__}")
    ids = _check_ids("Observation.token_ids", obs.token_ids, vocab_size, False)
    r = obs.reward
    if not (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r)):
        raise MalformedError(f"Observation.reward must be a finite number, got {r!r}")
    for name in ("done", "trained", "tool_error"):
        if not isinstance(getattr(obs, name), bool):
            raise MalformedError(f"Observation.{name} must be a bool, got {getattr(obs, name)!r}")
    return dataclasses.replace(obs, token_ids=ids, reward=float(r))
