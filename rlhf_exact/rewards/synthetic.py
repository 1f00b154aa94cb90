"""Reward of the synthetic token task (rlhf_exact/data/synthetic.py): the fraction of
generated tokens that lie in the row's target set. Works on token ids, not text, so
it does not depend on the tokenizer."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def synthetic_reward(completion_text: str, completion_ids: Sequence[int] | None, sample: Mapping[str, Any]) -> float:
    """(# completion tokens in sample["answer"]) / len(completion_ids); 0.0 for an
    empty completion. A final stop token counts as a miss, so stopping early does not
    pay more than filling the completion with targets."""
    if completion_ids is None:
        raise ValueError("the synthetic reward needs completion_ids (token ids), got None")
    if not completion_ids:
        return 0.0
    targets = set(sample["answer"])
    return sum(t in targets for t in completion_ids) / len(completion_ids)
