"""Evaluation during training: held-out prompts through the run's own samplers every
eval.every_steps steps (and after the last step), logged as eval/* beside the step's
metrics.

    evaluator = Evaluator.from_config(cfg, tokenizer, model_path)   # None when eval is off
    metrics = evaluator.evaluate(samplers, step)                    # after `step` steps

Per held-out prompt: one greedy completion (temperature 0: the most likely token at
every position) and eval.k sampled ones (the run's sampling parameters; seeds a function of
(run.seed, step, prompt), so a resumed run evaluates the same way). Every completion is
collected and scored as the training episodes are (envs/collect.py: with an environment
(env.name) each is a multi-turn episode, its reward the environment's plus the reward
functions'; a failing reward or environment counts as no reward). A completion passes
when the first reward function gives at least eval.pass_threshold (gsm8k: the final
answer is right; synthetic: every token is in the target set), or, with an environment
and no reward functions, when the environment's reward does.

  eval/greedy_pass@1         fraction of prompts whose greedy completion passes
  eval/pass@K                fraction of prompts with a passing completion among the K samples
  eval/pass@1                fraction of sampled completions that pass (pass@1 from K samples)
  eval/reward_mean           mean total reward of the sampled completions
  eval/first_reward_mean     mean of the first reward function alone (unweighted) over them: with a
                             reward model, the rule that its preferences came from
  eval/greedy_reward_mean    mean total reward of the greedy completions
  eval/response_length_mean  mean tokens of the sampled completions
  time/eval                  seconds

Held-out prompts: eval.files (GSM8K's test split in the grpo_qwen3 recipe) read like
data.train_files, the first eval.num_prompts of them; for data.name=synthetic the task's
prompts after the training ones (rows data.synthetic.num_prompts onward), which training
never sees.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from rlhf_exact.envs.episode import FAILED

EVAL_STEP_OFFSET = 1 << 20  # eval seeds come from steps no training step uses


def pass_metrics(passed: torch.Tensor, greedy_passed: torch.Tensor) -> dict[str, float]:
    """passed: [P, K] bool, sample j of prompt i passes; greedy_passed: [P] bool."""
    k = passed.shape[1]
    return {"eval/greedy_pass@1": float(greedy_passed.float().mean()),
            f"eval/pass@{k}": float(passed.any(dim=1).float().mean()),
            "eval/pass@1": float(passed.float().mean())}


def load_eval_rows(cfg, tokenizer, chat_template: str | None) -> list[dict]:
    """The held-out rows (module docstring), tokenized like the training prompts."""
    from rlhf_exact.data import load_prompt_rows

    d, e = cfg.data, cfg.eval
    if d.name == "synthetic":
        return load_prompt_rows(cfg, tokenizer, chat_template, offset=d.synthetic.num_prompts,
                                count=e.num_prompts)
    held_out = dataclasses.replace(cfg, data=dataclasses.replace(d, train_files=list(e.files)))
    return load_prompt_rows(held_out, tokenizer, chat_template)[:e.num_prompts]


class Evaluator:
    def __init__(self, cfg, collector, rows: list[dict]):
        """collector: the run's (envs/collect.py), whose rewards and environment eval uses."""
        self.cfg, self.collector, self.rows = cfg, collector, rows

    @classmethod
    def from_config(cls, cfg, tokenizer, model_path, collector) -> Evaluator | None:
        if not cfg.eval.every_steps:
            return None
        from rlhf_exact.data import read_chat_template

        return cls(cfg, collector, load_eval_rows(cfg, tokenizer, read_chat_template(model_path)))

    def due(self, step: int) -> bool:
        """Evaluate after `step` steps (1-based)?"""
        return step % self.cfg.eval.every_steps == 0 or step == self.cfg.run.steps

    def _score(self, episodes) -> tuple[list[float], list[bool], list[float]]:
        """Per episode: its total reward (0 when it failed), whether it passes, and the first
        reward function's value alone (unweighted; the environment's reward without one)."""
        ok = [e.finish_reason not in FAILED for e in episodes]
        total, errors = self.collector.rewards(self.rows, episodes, on_error="skip")
        total = [v if good and err is None else 0.0 for v, err, good in zip(total, errors, ok)]
        functions = self.collector.reward_spec.functions
        if functions:
            first, errors = self.collector.rewards(self.rows, episodes, [(functions[0][0], 1.0)], on_error="skip",
                                                  environment=False, model=False)
        else:  # an environment's reward alone (the schema allows no reward function only with one)
            first = [e.reward for e in episodes]
        t = self.cfg.eval.pass_threshold
        passed = [good and err is None and v >= t for v, err, good in zip(first, errors, ok)]
        return total, passed, [v if good and err is None else 0.0 for v, err, good in zip(first, errors, ok)]

    def evaluate(self, samplers, step: int) -> dict[str, float]:
        from rlhf_exact.algo.rollout import request_seed

        t0 = time.perf_counter()
        k, n = self.cfg.eval.k, len(self.rows)
        seeds = [request_seed(self.cfg.run.seed, EVAL_STEP_OFFSET + step, i, k) for i in range(n)]
        greedy_params = dataclasses.replace(samplers.params, temperature=0.0, top_k=0, top_p=1.0)
        (greedy, _), (sampled, _) = [self.collector.collect(samplers, self.rows, seeds, count, params,
                                                            where=f"eval after step {step}", keep_failed=True)
                                     for count, params in ((1, greedy_params), (k, None))]
        g_reward, g_pass, _ = self._score(greedy)
        s_reward, s_pass, s_first = self._score(sampled)
        out = pass_metrics(torch.tensor(s_pass).view(n, k), torch.tensor(g_pass))
        return out | {"eval/reward_mean": sum(s_reward) / len(s_reward),
                      "eval/first_reward_mean": sum(s_first) / len(s_first),
                      "eval/greedy_reward_mean": sum(g_reward) / len(g_reward),
                      "eval/response_length_mean": sum(e.completion.numel() for e in sampled) / len(sampled),
                      "time/eval": time.perf_counter() - t0}
