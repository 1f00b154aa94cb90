"""Preference pairs for reward-model training (python -m rlhf_exact.train_rm): JSON-lines
files validated line by line, or pairs generated from the synthetic token task.

One pair per line, three fields, each text or a list of token ids:

    {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}
    {"prompt": [101, 7, 42], "chosen": [17, 2], "rejected": [9, 9, 2]}

Text prompts go through the model's chat template as one user message with the
generation prompt (as the prompt data of `train` do, data/loader.py), so the reward
model sees prompts the way the policy does; text completions are tokenized as they
are (no special tokens added: end them with the end-of-turn token if the policy's
completions have one). Token-id lists are used verbatim. The reward model scores
prompt + chosen and prompt + rejected.

A malformed line (not UTF-8 JSON, not an object, a missing field, a field neither a
string nor a list of token ids, an id outside the vocabulary, an empty completion,
chosen equal to rejected, prompt + completion longer than preference.max_tokens)
raises ValueError naming `file:line` and the field, or with on_malformed="skip" is
dropped and counted. Blank lines are ignored.

Synthetic pairs (`synthetic_pairs`): the prompts of the synthetic token task
(data/synthetic.py) and two completions drawn from the prompt's target set and the
other ids; the chosen one has the higher synthetic rule reward (the fraction of target
tokens), so a reward model that learns it ranks completions the way that rule does.
The pairs cover what a policy can do against the model: misses from the other prompts'
target sets, lengths 1 .. completion_len, stop-id endings (docs/training.md, "What the
synthetic pairs must cover": each gap was found by a policy that exploited it).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import random
from collections.abc import Sequence

from .loader import render_chat_prompt
from .prompts import _jsonl_rows, _nearest
from ..rewards.synthetic import synthetic_reward
from .synthetic import SyntheticTask

logger = logging.getLogger(__name__)
FIELDS = ("prompt", "chosen", "rejected")


def _tokens(value, field: str, tokenizer, chat_template: str | None, vocab_size: int) -> list[int]:
    """A field's token ids; ValueError (no location) for a bad value."""
    if isinstance(value, str):
        if field == "prompt" and chat_template is not None:
            return list(tokenizer.encode(render_chat_prompt(chat_template, value), add_special_tokens=False).ids)
        return list(tokenizer.encode(value, add_special_tokens=False).ids)
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        bad = [t for t in value if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"{field!r} has token id {bad[0]} outside [0, {vocab_size})")
        return list(value)
    raise ValueError(f"{field!r} must be a string or a list of token ids, got {type(value).__name__}")


def parse_pair(row, tokenizer, chat_template: str | None, vocab_size: int, max_tokens: int) -> dict:
    """{"prompt_ids", "chosen_ids", "rejected_ids"} of one parsed JSON line; ValueError
    saying what is wrong (the caller adds file:line)."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for f in FIELDS:
        if f not in row:
            raise ValueError(f"no field {f!r} (fields: {', '.join(map(str, row))}){_nearest(f, row)}")
    ids = {f: _tokens(row[f], f, tokenizer, chat_template, vocab_size) for f in FIELDS}
    for f in ("chosen", "rejected"):
        if not ids[f]:
            raise ValueError(f"{f!r} is empty")
        n = len(ids["prompt"]) + len(ids[f])
        if n > max_tokens:
            raise ValueError(f"prompt + {f!r} has {n} tokens > preference.max_tokens={max_tokens}")
    if ids["chosen"] == ids["rejected"]:
        raise ValueError("'chosen' and 'rejected' are the same tokens")
    return {"prompt_ids": ids["prompt"], "chosen_ids": ids["chosen"], "rejected_ids": ids["rejected"]}


def load_preference_pairs(files: Sequence[str | os.PathLike], tokenizer, *, vocab_size: int,
                          max_tokens: int, chat_template: str | None = None,
                          on_malformed: str = "error") -> tuple[list[dict], int]:
    """(pair rows in file order, number skipped). Each row: prompt_ids, chosen_ids,
    rejected_ids and row_id ("file:line"). tokenizer: a `tokenizers.Tokenizer`."""
    if on_malformed not in ("error", "skip"):
        raise ValueError(f"on_malformed must be 'error' or 'skip', got {on_malformed!r}")
    out, skipped, first = [], 0, None
    for file in files:
        path = pathlib.Path(file)
        if path.suffix != ".jsonl":
            raise ValueError(f"{path}: preference pairs are read from .jsonl files, got {path.suffix!r}")
        if not path.is_file():
            raise FileNotFoundError(f"preference file not found: {path}")
        for where, row, problem in _jsonl_rows(path):
            try:
                if problem is not None:
                    raise ValueError(problem[0])
                out.append(parse_pair(row, tokenizer, chat_template, vocab_size, max_tokens) | {"row_id": where})
            except ValueError as e:
                if on_malformed == "error":
                    raise ValueError(f"{where}: malformed pair: {e}") from None
                skipped += 1
                first = first or f"{where}: {e}"
    if skipped:
        logger.warning("skipped %d malformed preference pairs; first: %s", skipped, first)
    if not out:
        raise ValueError(f"no usable preference pairs in {', '.join(map(str, files))}"
                         + (f" ({skipped} skipped, first: {first})" if skipped else ""))
    return out, skipped


MIN_REWARD_GAP = 0.25  # synthetic pairs are clear preferences: rule rewards at least this far apart


def synthetic_pairs(task: SyntheticTask, n: int, offset: int, completion_len: int) -> list[dict]:
    """Pairs offset .. offset+n-1 on the task's prompts (pair i depends only on the task,
    i and completion_len). Each completion has 1 .. completion_len tokens and, half the
    time, ends in one of the task's reserved (stop) ids, as a sampled completion does; the
    chosen one's synthetic rule reward (`synthetic_reward`) is higher by at least
    MIN_REWARD_GAP. Deterministic."""
    if completion_len < 1:
        raise ValueError(f"synthetic_pairs: completion_len must be >= 1, got {completion_len}")
    out = []
    for i, row in enumerate(task.rows(n, offset=offset), start=offset):
        rng = random.Random(f"pairs/{task.seed}/{i}")
        own = set(row["answer"])
        others = [t for ts in task.target_sets if not own.intersection(ts) for t in ts]
        while True:
            a, b = (_synthetic_completion(task, row["answer"], others, completion_len, rng) for _ in range(2))
            ra, rb = (synthetic_reward("", c, row) for c in (a, b))
            if abs(ra - rb) >= MIN_REWARD_GAP:
                break
        chosen, rejected = (a, b) if ra > rb else (b, a)
        out.append({"prompt_ids": row["prompt_ids"], "chosen_ids": chosen, "rejected_ids": rejected,
                    "row_id": f"synthetic_pairs:{i}"})
    return out


def _synthetic_completion(task: SyntheticTask, targets: Sequence[int], others: Sequence[int], max_len: int,
                          rng: random.Random) -> list[int]:
    """1 .. max_len ids: some of the prompt's targets among misses (half of them from the
    other prompts' target sets, `others`), then, half the time, a stop id."""
    length = rng.randint(1, max_len)
    stops = bool(task.reserved_ids) and rng.random() < 0.5
    body = length - stops
    k = rng.randint(0, body)
    toks = [rng.choice(targets) for _ in range(k)]
    toks += [rng.choice(others) if others and rng.random() < 0.5 else rng.choice(task.filler_ids)
             for _ in range(body - k)]
    rng.shuffle(toks)
    if stops:
        toks.append(rng.choice(task.reserved_ids))
    return toks


def write_pairs_jsonl(rows: Sequence[dict], path: str | os.PathLike) -> pathlib.Path:
    """Pair rows as a JSON-lines file of token-id lists (the format load_preference_pairs reads)."""
    path = pathlib.Path(path)
    path.write_text("".join(json.dumps({"prompt": r["prompt_ids"], "chosen": r["chosen_ids"],
                                        "rejected": r["rejected_ids"]}) + "\n" for r in rows))
    return path
