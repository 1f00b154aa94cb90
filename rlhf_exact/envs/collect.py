"""A step's rollout in one place: prompts in, scored `Episode`s out, for the training loop
and for evaluation alike.

    collector = Collector.from_config(cfg, tokenizer, model_path)
    episodes, metrics = collector.collect(samplers, rows, seeds, n=group_size)   # group-major
    episodes, rewards, errors = collector.reward_episodes(rows, episodes)        # per episode
    collector.close()

Without an environment (env.name empty) an episode is one turn: `n` completions of each
row in one sampler call, completion j of row i seeded seeds[i] + j. With one, it is a
multi-turn episode (episode.py: run_episodes), episode j of row i seeded seeds[i] + j and
its turn 0 drawn with that seed, so a one-turn environment episode draws exactly the
completion single-turn sampling draws (tests/envs/test_collect.py shows it on the real
engine). Either way the result is the same record, `types.Episode`, built here only.

Rewards: the reward functions (reward.functions, weighted) on the model's tokens of the
episode, plus the environment's reward when there is one, plus the reward model's score
of prompt + completion (reward.model, weighted) when there is one; a reward function that
fails is an error per episode (reward.on_error=skip) or raises (stop). `score_model`
stores the reward model's scores in the episodes (Episode.model_score), so a step scores
each sequence once; `reward_episodes` also stores each function's own value
(Episode.reward_values, for the per-source metrics). The reward model is scored in this
process (rewards/model.py, reward.model.num_scorers=0) or by a group of Ray actors
(rewards/scorer_group.py, which Ray must be up for): both have `score(sequences)`, and
give the same bits on the exact kernels.

`samplers` is anything with `sample(prompts, n, seeds, params)` and a default `params`
(sampler/group.py's SamplerGroup), so this module does not import the sampler.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlhf_exact.rewards.model import RewardModelScorer
from rlhf_exact.rewards.scorer_group import ScorerGroup
from rlhf_exact.types import Episode

from .episode import Limits, Trajectory, episode_metrics, run_episodes
from .runner import EnvRunner

log = logging.getLogger("rlhf_exact")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """The reward functions of reward.* (names and weights), how their failures count."""

    functions: tuple[tuple[str, float], ...] = ()  # (name or import path, weight)
    on_error: str = "stop"  # "stop": raise; "skip": a failed reward drops the episode
    timeout_s: float = 60.0  # per sample, for an async reward
    model_weight: float = 1.0  # the reward model's weight (reward.model.weight)


class Collector:
    """Rollout and rewards of episodes (module docstring)."""

    def __init__(self, tokenizer, rewards: RewardSpec, max_tokens: int, runner: EnvRunner | None = None,
                 limits: Limits | None = None, scorer: RewardModelScorer | ScorerGroup | None = None):
        """max_tokens: tokens per completion (per model turn); runner, limits: the environment
        and what ends its episodes (None: single-turn); scorer: the reward model, in this
        process or a group of actors (None: none; closed by close())."""
        if (runner is None) != (limits is None):
            raise ValueError("Collector: an environment runner needs its limits and limits need a runner")
        self.tokenizer, self.reward_spec, self.runner, self.limits = tokenizer, rewards, runner, limits
        self.scorer = scorer
        # Dr. GRPO's constant L (loss_aggregation seq_mean_token_sum): the most tokens a sequence trains on
        self.max_loss_tokens = max_tokens if limits is None else \
            min(limits.max_turns * max_tokens, limits.max_episode_tokens)

    @classmethod
    def from_config(cls, cfg, tokenizer, model_path) -> Collector:
        """The run's collector: reward.*, and env.* when env.name is set (its worker
        processes start here), and the reward model's scorer group when
        reward.model.num_scorers >= 1 (Ray must be up)."""
        r, e, sp = cfg.reward, cfg.env, cfg.sampling
        spec = RewardSpec(tuple((f.name, f.weight) for f in r.functions), r.on_error, r.timeout_s, r.model.weight)
        scorer = None
        if r.model.path and r.model.num_scorers:
            scorer = ScorerGroup.from_config(cfg)
        elif r.model.path:
            scorer = RewardModelScorer.load(r.model.path, getattr(torch, cfg.model.dtype), r.model.batch_tokens,
                                            cfg.kernels)
        if not e.name:
            return cls(tokenizer, spec, sp.max_tokens, scorer=scorer)
        from rlhf_exact.models.hf_io import read_config

        runner = EnvRunner(e.name, e.kwargs, tokenizer, vocab_size=read_config(model_path).vocab_size,
                           num_workers=e.num_workers, timeout_s=e.timeout_s, imports=cfg.run.imports)
        limits = Limits(max_turns=e.max_turns, max_turn_tokens=sp.max_tokens,
                        max_episode_tokens=e.max_episode_tokens or cfg.sampler.max_model_len - 1)
        return cls(tokenizer, spec, sp.max_tokens, runner, limits, scorer)

    def collect(self, samplers, rows: Sequence[Mapping[str, Any]], seeds: Sequence[int], n: int, params=None, *,
                where: str = "", keep_failed: bool = False) -> tuple[list[Episode], dict[str, float]]:
        """n episodes of every row, group-major (episode j of row i seeded seeds[i] + j),
        with `params` (default: the samplers'), and the episode/* metrics when there is an
        environment. An episode whose environment or sampler failed is logged and left out
        (keep_failed: kept, its finish reason says why); all of them failing is an error.
        where: names the caller in errors ("step 3")."""
        params = params or samplers.params
        if self.runner is None:
            return self._single_turn(samplers, rows, seeds, n, params, where), {}
        trajectories = run_episodes(self.runner, [r for r in rows for _ in range(n)],
                                    lambda prompts, ps, s: samplers.sample(prompts, 1, s, ps), limits=self.limits,
                                    params=params, seeds=[seed + j for seed in seeds for j in range(n)],
                                    decode=self.tokenizer.decode)
        failed = [t.error for t in trajectories if t.failed]
        if len(failed) == len(trajectories) and not keep_failed:
            raise RuntimeError(f"{where}: every episode failed (nothing to train on); first: {failed[0]}")
        if failed:
            log.warning("%s: %d episode(s) dropped, environment or sampler failed; first: %s", where, len(failed),
                        failed[0])
        return [_from_trajectory(k // n, t) for k, t in enumerate(trajectories) if keep_failed or not t.failed], \
            episode_metrics(trajectories)

    def _single_turn(self, samplers, rows, seeds, n, params, where) -> list[Episode]:
        prompts = [list(r["prompt_ids"]) for r in rows]
        results = samplers.sample(prompts, n, seeds, params)
        bad = [(i, r.error) for i, r in enumerate(results) if r.error]
        if bad:
            raise RuntimeError(f"{where}: the sampler refused prompt(s) {bad[:3]}")
        return [Episode(group=i, prompt=torch.tensor(prompts[i], dtype=torch.int64),
                        completion=torch.tensor(c.token_ids, dtype=torch.int64), sampler_logprobs=c.logprobs,
                        finish_reason=c.finish_reason)
                for i, r in enumerate(results) for c in r.completions]

    def score_model(self, episodes: Sequence[Episode]) -> list[Episode]:
        """The episodes with the reward model's score (model_score) of prompt + completion,
        where a reward model is configured and they have none yet."""
        todo = [i for i, e in enumerate(episodes) if e.model_score is None]
        if self.scorer is None or not todo:
            return list(episodes)
        scores = self.scorer.score([torch.cat([episodes[i].prompt, episodes[i].completion]).tolist() for i in todo])
        out = list(episodes)
        for i, s in zip(todo, scores.tolist()):
            out[i] = dataclasses.replace(out[i], model_score=s)
        return out

    def reward_episodes(self, rows: Sequence[Mapping[str, Any]], episodes: Sequence[Episode]
                        ) -> tuple[list[Episode], list[float], list[str | None]]:
        """The step's rewards, as `rewards` gives them, and the episodes with what went into
        them: the reward model's score (model_score, scored once) and each reward
        function's own value (reward_values)."""
        episodes = self.score_model(episodes)
        rewards, errors, values = self._rewards(rows, episodes)
        return [dataclasses.replace(e, reward_values=v) for e, v in zip(episodes, values)], rewards, errors

    def rewards(self, rows: Sequence[Mapping[str, Any]], episodes: Sequence[Episode],
                functions: Sequence[tuple[str, float]] | None = None, on_error: str | None = None,
                environment: bool = True, model: bool = True) -> tuple[list[float], list[str | None]]:
        """Per episode (of row rows[e.group]): the weighted reward functions (default: the
        spec's) on the model's tokens, plus the environment's reward (environment=False:
        without it), plus the weighted reward model's score (model=False: without it; the
        episodes' model_score, scored here if they have none); and the reward's error (None
        when it worked; on_error=skip, its reward is NaN, or 0 with an environment)."""
        rewards, errors, _ = self._rewards(rows, episodes, functions, on_error, environment, model)
        return rewards, errors

    def _rewards(self, rows, episodes, functions=None, on_error=None, environment=True, model=True
                 ) -> tuple[list[float], list[str | None], list[dict[str, float]]]:
        """rewards(), and each function's own value per episode (compute_reward_terms)."""
        from rlhf_exact.rewards import compute_reward_terms

        s = self.reward_spec
        functions = s.functions if functions is None else functions
        ids = [(e.completion if e.model_mask is None else e.completion[e.model_mask]).tolist() for e in episodes]
        rewards, errors, values = [0.0] * len(episodes), [None] * len(episodes), [{} for _ in episodes]
        if functions:
            rewards, errors, values = compute_reward_terms(
                functions, [self.tokenizer.decode(t) for t in ids], ids, [rows[e.group] for e in episodes],
                on_error=on_error or s.on_error, timeout_s=s.timeout_s)
        if self.runner is not None and environment:  # a failed reward: dropped from its group by score()
            rewards = [0.0 if err else e.reward + r for e, r, err in zip(episodes, rewards, errors)]
        if self.scorer is not None and model:
            w = s.model_weight
            rewards = [r + w * e.model_score if err is None else r
                       for e, r, err in zip(self.score_model(episodes), rewards, errors)]
        return rewards, errors, values

    def scorer_metrics(self) -> dict[str, float]:
        """scorer/restarts (restarts of the scorer group's actors so far) with a group, else none."""
        return {"scorer/restarts": float(self.scorer.restarts)} if isinstance(self.scorer, ScorerGroup) else {}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        if isinstance(self.scorer, ScorerGroup):
            self.scorer.shutdown()


def _from_trajectory(group: int, t: Trajectory) -> Episode:
    return Episode(group=group, prompt=torch.tensor(t.prompt_ids, dtype=torch.int64),
                   completion=torch.tensor(t.token_ids, dtype=torch.int64), sampler_logprobs=t.sampler_logprobs,
                   finish_reason=t.finish_reason, reward=t.reward, model_mask=t.model_mask, loss_mask=t.loss_mask,
                   turns=t.num_turns, tool_errors=t.tool_errors)
