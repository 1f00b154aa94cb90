"""Multi-turn episodes, token-in, token-out: the rollout of a batch of episodes through
a sampler and an environment runner.

    episodes = run_episodes(runner, rows, sample, limits=Limits(max_turns=4), params=RequestParams(...),
                            seeds=[...], decode=tokenizer.decode)

Each round sends every active episode's whole sequence so far (prompt, previous turns,
observations: the ids themselves, never re-tokenized text) as one request with n=1, so
the sampler's request for turn t+1 extends its request for turn t (a prefix cache hit).
The sampled turn goes to the environment; its observation's ids are appended and the
episode goes on, until the environment says done or a limit ends it:

  max_turns           model turns per episode;
  max_episode_tokens  prompt + turns + observations (<= the sampler's max_model_len - 1);
                      each turn may take at most what is left, an observation that
                      would leave no room for another token ends the episode;
  max_turn_tokens     tokens per model turn (the request's max_tokens).

The environment's step is taken after EVERY turn, the last one too (so a final reward
is never lost); after a limit its observation's ids are not appended. Every episode ends
with one finish reason, and `episode_metrics` counts each (episode/finish/<reason>):

  done           the environment said done;
  max_turns      a limit: the environment never said done within max_turns;
  max_tokens     a limit: the episode's token budget ran out (a turn cut to what was left,
                 or an observation too long to leave room for another token);
  env_error      the environment failed: start or step raised, timed out, returned a
                 malformed Start/Observation or killed its worker (runner.FAILURE_KINDS),
                 or start gave a prompt that fills the whole budget;
  sampler_error  the sampler refused the turn's request.

The two limits are episode/truncated_frac; the two errors are episode/errors, and the
loop drops those episodes from their groups (their reward is not the environment's).

Seeds: turn t of an episode whose seed is s samples with `turn_seed(s, t)`; turn 0 uses
s itself, so a one-turn episode draws what single-turn sampling with seed s draws.

What the trainer gets (`Trajectory`): prompt_ids [P] and token_ids [C] (everything after the
prompt, in order), model_mask [C] (sampled by the model: the tokens with a sampler
logprob, the parity check's tokens), loss_mask [C] (model tokens and observations
returned with trained=True) and sampler_logprobs [M] (M = model_mask.sum(), fp32, in
order).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .base import Observation, Start, Turn
from .runner import EnvFailure, EnvRunner

FINISH_REASONS = ("done", "max_turns", "max_tokens", "env_error", "sampler_error")
TRUNCATED = ("max_turns", "max_tokens")  # limits: the episode is kept
FAILED = ("env_error", "sampler_error")  # failures: the episode is dropped from its group


@dataclasses.dataclass(frozen=True)
class Limits:
    """What ends an episode besides the environment (module docstring)."""

    max_turns: int = 4  # model turns per episode, >= 1
    max_episode_tokens: int = 512  # prompt + turns + observations, >= 2
    max_turn_tokens: int = 64  # tokens per model turn, >= 1

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_episode_tokens < 2 or self.max_turn_tokens < 1:
            raise ValueError(f"Limits: max_turns={self.max_turns} >= 1, max_episode_tokens="
                             f"{self.max_episode_tokens} >= 2 and max_turn_tokens={self.max_turn_tokens} >= 1")


@dataclasses.dataclass
class Trajectory:
    """One multi-turn episode as a token sequence (module docstring: what each field holds)."""

    prompt_ids: list[int]  # [P] the first prompt
    token_ids: list[int] = dataclasses.field(default_factory=list)  # [C] turns and observations
    model_mask: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # [C]
    loss_mask: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # [C]
    sampler_logprobs: torch.Tensor = dataclasses.field(
        default_factory=lambda: torch.zeros(0, dtype=torch.float32))  # [M] fp32
    turn_spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (offset in token_ids, length)
    turn_rewards: list[float] = dataclasses.field(default_factory=list)  # one per turn
    tool_errors: int = 0  # turns whose observation had tool_error
    finish_reason: str = ""  # one of FINISH_REASONS
    error: str | None = None  # why, when finish_reason is one of FAILED

    @property
    def failed(self) -> bool:
        """Ended by an environment or sampler failure (dropped from its group)."""
        return self.finish_reason in FAILED

    @property
    def reward(self) -> float:
        """The sum of the turns' rewards."""
        return math.fsum(self.turn_rewards)

    @property
    def num_turns(self) -> int:
        return len(self.turn_spans)

    @property
    def model_token_ids(self) -> list[int]:
        """The sampled tokens of all turns, in order [M]."""
        return [t for t, m in zip(self.token_ids, self.model_mask.tolist()) if m]


# (prompts, per-request params, per-request seeds) -> one SampleResult (n=1) per prompt
SampleFn = Callable[[list[list[int]], list[Any], list[int | None]], list[Any]]


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The seed of turn `turn` of an episode seeded `seed` (turn 0: `seed`; None stays None)."""
    if seed is None or turn == 0:
        return seed
    return (seed * 1_000_003 + turn * 7_919) % (2 ** 31 - 1)


def turn_budget(limits: Limits, length: int) -> int:
    """max_tokens of the next turn of a sequence of `length` tokens (0: no room left)."""
    return max(0, min(limits.max_turn_tokens, limits.max_episode_tokens - length))


def _append(ep: Trajectory, ids: Sequence[int], model: bool, trained: bool) -> None:
    n = len(ids)
    ep.token_ids.extend(ids)
    ep.model_mask = torch.cat([ep.model_mask, torch.full((n,), model, dtype=torch.bool)])
    ep.loss_mask = torch.cat([ep.loss_mask, torch.full((n,), trained, dtype=torch.bool)])


def _fail(ep: Trajectory, reason: str, why: str) -> None:
    ep.finish_reason, ep.error = reason, why


def _start(runner: EnvRunner, rows: Sequence[Mapping[str, Any]], limits: Limits) -> tuple[list[Trajectory], list]:
    """Every row's episode as the environment starts it (a failed start or a prompt that
    fills the budget: failed already) and its state."""
    episodes: list[Trajectory] = []
    states: list[Any] = []
    for start in runner.start(rows):
        if isinstance(start, EnvFailure):
            episodes.append(Trajectory(prompt_ids=[]))
            _fail(episodes[-1], "env_error", f"start: {start.kind}: {start.message}")
        else:
            assert isinstance(start, Start)
            episodes.append(Trajectory(prompt_ids=list(start.prompt_ids)))
            if len(start.prompt_ids) >= limits.max_episode_tokens:
                _fail(episodes[-1], "env_error", f"start: the prompt has {len(start.prompt_ids)} tokens, "
                                                 f"max_episode_tokens is {limits.max_episode_tokens}")
        states.append(None if isinstance(start, EnvFailure) else start.state)
    return episodes, states


def run_episodes(runner: EnvRunner, rows: Sequence[Mapping[str, Any]], sample: SampleFn, *, limits: Limits,
                 params, seeds: Sequence[int | None], decode: Callable[[list[int]], str]) -> list[Trajectory]:
    """One episode per row (repeat a row per group member), rolled out in rounds of one
    turn (module docstring). `params` is the sampler's per-request config (a dataclass
    with max_tokens, e.g. sampler.engine.RequestParams); each turn's request gets
    max_tokens = turn_budget(...). Returns the episodes in row order, each with its
    finish reason (module docstring); failed ones keep what they had."""
    if len(seeds) != len(rows):
        raise ValueError(f"run_episodes: {len(rows)} rows but {len(seeds)} seeds")
    episodes, states = _start(runner, rows, limits)
    for t in range(limits.max_turns):
        active = [k for k, ep in enumerate(episodes) if not ep.finish_reason]
        if not active:
            break
        prompts = [episodes[k].prompt_ids + episodes[k].token_ids for k in active]
        reqs = [dataclasses.replace(params, max_tokens=turn_budget(limits, len(p))) for p in prompts]
        results = sample(prompts, reqs, [turn_seed(seeds[k], t) for k in active])
        calls, stepped = [], []
        for k, r in zip(active, results):
            ep = episodes[k]
            if r.error is not None or len(r.completions) != 1:
                _fail(ep, "sampler_error", f"turn {t}: the sampler refused the request: {r.error}")
                continue
            c = r.completions[0]
            ids = list(c.token_ids)
            ep.turn_spans.append((len(ep.token_ids), len(ids)))
            _append(ep, ids, model=True, trained=True)
            ep.sampler_logprobs = torch.cat([ep.sampler_logprobs, c.logprobs.to(torch.float32)])
            turn = Turn(token_ids=tuple(ids), text=decode(ids), finish_reason=c.finish_reason, index=t)
            calls.append((rows[k], turn, states[k]))
            stepped.append(k)
        for k, obs in zip(stepped, runner.step(calls)):
            ep = episodes[k]
            if isinstance(obs, EnvFailure):
                _fail(ep, "env_error", f"turn {t}: step: {obs.kind}: {obs.message}")
                continue
            assert isinstance(obs, Observation)
            ep.turn_rewards.append(obs.reward)
            ep.tool_errors += int(obs.tool_error)
            states[k] = obs.state
            length = len(ep.prompt_ids) + len(ep.token_ids)
            if obs.done:
                ep.finish_reason = "done"
            elif t + 1 == limits.max_turns:
                ep.finish_reason = "max_turns"
            elif turn_budget(limits, length + len(obs.token_ids)) == 0:
                ep.finish_reason = "max_tokens"
            else:
                _append(ep, obs.token_ids, model=False, trained=obs.trained)
    return episodes


def episode_metrics(episodes: Sequence[Trajectory]) -> dict[str, float]:
    """Step metrics over a batch of episodes: episode/turns_mean (over episodes that did
    not fail), episode/tool_errors (turns with a failed tool call, summed),
    episode/truncated_frac (finished by max_turns or max_tokens, over episodes that did not
    fail), episode/errors (failed episodes, dropped from their groups) and
    episode/finish/<reason> (episodes per finish reason, every one of FINISH_REASONS)."""
    ok = [e for e in episodes if not e.failed]
    n = max(len(ok), 1)
    counts = {f"episode/finish/{r}": float(sum(e.finish_reason == r for e in episodes)) for r in FINISH_REASONS}
    return {
        "episode/turns_mean": sum(e.num_turns for e in ok) / n,
        "episode/tool_errors": float(sum(e.tool_errors for e in episodes)),
        "episode/truncated_frac": sum(e.finish_reason in TRUNCATED for e in ok) / n,
        "episode/errors": float(len(episodes) - len(ok)),
        **counts,
    }
