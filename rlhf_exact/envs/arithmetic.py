"""`synthetic_calculator`: the synthetic token task (rlhf_exact/data/synthetic.py) as a
multi-turn episode with a calculator tool, for the tiny CPU model (`grpo_qwen3_tiny_tools`).

An episode has `turns` model turns. Every turn is a call of the calculator on the turn's
decoded text (envs/calculator.py; a trailing "=" is allowed); the observation appended
after it is the text "=<value>\\n", or "=?\\n" with tool_error set when the text is not an
arithmetic expression. The turn's reward is the synthetic task's, the fraction of the
turn's tokens in the row's target set, plus `call_bonus` for a successful call, divided
by `turns`, so the episode's reward is the mean over turns. A tiny random-init model
learns the target tokens within a few dozen steps (as in the single-turn recipe); the
calculator is the tool plumbing: observation tokens the model reads and is never
trained on, tool errors counted, turn after turn over one token sequence.

Rows: the synthetic task's {"prompt_ids", "answer": [target ids]}; the episode's first
prompt is the row's prompt_ids.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Environment, Observation, Turn
from .calculator import CalculatorError, evaluate, format_number


class SyntheticCalculatorEnv(Environment):
    def __init__(self, tokenizer=None, turns: int = 3, call_bonus: float = 0.0):
        """turns: model turns per episode (>= 1); call_bonus: reward for a turn whose text
        the calculator evaluates (before the division by turns)."""
        super().__init__(tokenizer)
        if tokenizer is None:
            raise ValueError("synthetic_calculator needs the run's tokenizer (its observations are text)")
        if not (isinstance(turns, int) and turns >= 1):
            raise ValueError(f"synthetic_calculator: turns must be an integer >= 1, got {turns!r}")
        self.turns, self.call_bonus = turns, float(call_bonus)

    def step(self, row: Mapping[str, Any], turn: Turn, state: Any) -> Observation:
        targets = set(row["answer"])
        hits = sum(t in targets for t in turn.token_ids) / max(len(turn.token_ids), 1)
        try:
            result, ok = format_number(evaluate(turn.text)), True
        except CalculatorError:
            result, ok = "?", False
        reward = (hits + (self.call_bonus if ok else 0.0)) / self.turns
        return Observation(token_ids=self.encode(f"={result}\n"), reward=reward, done=turn.index + 1 >= self.turns,
                           tool_error=not ok)
