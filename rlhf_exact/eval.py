"""Evaluation during training: held-out prompts through the run's own samplers every
eval.every_steps steps (and after the last step), logged as eval/* beside the step's
metrics.

    evaluator = Evaluator.from_config(cfg, tokenizer, model_path)   # None when eval is off
    metrics = evaluator.evaluate(samplers, step)                    # after `step` steps

Per held-out prompt: one greedy completion (temperature 0: the most likely token at
every position) and eval.k sampled ones (the run's sampling parameters; seeds a function of
(run.seed, step, prompt), so a resumed run evaluates the same way). Every completion is
scored by the run's reward functions (a failing reward counts as no reward). A
completion passes when the first reward function gives at least eval.pass_threshold
(gsm8k: the final answer is right; synthetic: every token is in the target set).

  eval/greedy_pass@1         fraction of prompts whose greedy completion passes
  eval/pass@K                fraction of prompts with a passing completion among the K samples
  eval/pass@1                fraction of sampled completions that pass (pass@1 from K samples)
  eval/reward_mean           mean total reward of the sampled completions
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
    def __init__(self, cfg, tokenizer, rows: list[dict]):
        from rlhf_exact.sampler.engine import RequestParams

        self.cfg, self.tokenizer, self.rows = cfg, tokenizer, rows
        sp = cfg.sampling
        self.sampled = RequestParams(max_tokens=sp.max_tokens, top_k=sp.top_k, top_p=sp.top_p,
                                      stop_token_ids=tuple(sp.stop_token_ids))
        self.greedy = dataclasses.replace(self.sampled, temperature=0.0, top_k=0, top_p=1.0)

    @classmethod
    def from_config(cls, cfg, tokenizer, model_path) -> Evaluator | None:
        if not cfg.eval.every_steps:
            return None
        from rlhf_exact.data import read_chat_template

        return cls(cfg, tokenizer, load_eval_rows(cfg, tokenizer, read_chat_template(model_path)))

    def due(self, step: int) -> bool:
        """Evaluate after `step` steps (1-based)?"""
        return step % self.cfg.eval.every_steps == 0 or step == self.cfg.run.steps

    def _score(self, rows, ids) -> tuple[list[float], list[bool]]:
        from rlhf_exact.rewards import compute_rewards

        r = self.cfg.reward
        texts = [self.tokenizer.decode(t) for t in ids]
        total, _ = compute_rewards([(f.name, f.weight) for f in r.functions], texts, ids, rows, on_error="skip",
                                   timeout_s=r.timeout_s)
        first, errors = compute_rewards([(r.functions[0].name, 1.0)], texts, ids, rows, on_error="skip",
                                        timeout_s=r.timeout_s)
        passed = [err is None and v >= self.cfg.eval.pass_threshold for v, err in zip(first, errors)]
        return [v if v == v else 0.0 for v in total], passed  # a failed reward (NaN) counts as none

    def evaluate(self, samplers, step: int) -> dict[str, float]:
        from rlhf_exact.algo.rollout import request_seed

        t0 = time.perf_counter()
        k, prompts = self.cfg.eval.k, [list(r["prompt_ids"]) for r in self.rows]
        seeds = [request_seed(self.cfg.run.seed, EVAL_STEP_OFFSET + step, i, k) for i in range(len(prompts))]
        greedy = samplers.sample(prompts, 1, seeds, params=self.greedy)
        sampled = samplers.sample(prompts, k, seeds, params=self.sampled)
        g_ids = [r.completions[0].token_ids for r in greedy]
        s_ids = [c.token_ids for r in sampled for c in r.completions]
        g_reward, g_pass = self._score(self.rows, g_ids)
        s_reward, s_pass = self._score([row for row in self.rows for _ in range(k)], s_ids)
        out = pass_metrics(torch.tensor(s_pass).view(len(prompts), k), torch.tensor(g_pass))
        out |= {"eval/reward_mean": sum(s_reward) / len(s_reward),
                "eval/greedy_reward_mean": sum(g_reward) / len(g_reward),
                "eval/response_length_mean": sum(map(len, s_ids)) / len(s_ids),
                "time/eval": time.perf_counter() - t0}
        return out
