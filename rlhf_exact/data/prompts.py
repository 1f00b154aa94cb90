"""Prompt sets from local JSON-lines or Parquet files, validated row by row.

    rows, skipped = load_prompts(["../shared/data/gsm8k/train.jsonl"], prompt_key="question",
                                 answer_key="answer", on_malformed="error")

Each returned row is the file's row (all its fields) plus three normalised keys that
the rest of the framework reads: "prompt" (= row[prompt_key], a non-empty str),
"answer" (= row[answer_key], not null) and "row_id" ("<file>:<line>" for JSON lines,
"<file>:row <i>" for Parquet), so a reward error can point at its source row.

A malformed row, i.e. for JSON lines a line that is not valid UTF-8 JSON, not an
object, lacks either key, has a non-string or empty prompt or a null answer (blank
lines are ignored); for Parquet a row with a null/non-string/empty prompt or a null
answer, raises MalformedRowError (a ValueError) naming the file and the 1-based line
(0-based row index for Parquet), or with on_malformed="skip" is dropped and counted. A Parquet file without
the prompt or answer column is always an error (a wrong key, not a bad row), as is
ending with no rows at all.

Departure from "load everything with `datasets`": JSON lines are read by the
standard library's json, line by line. That loop is the validator the brief asks
for, and handing the file to `datasets.load_dataset("json")` afterwards would parse
it a second time, fail on the very lines on_malformed="skip" is meant to drop, and
unify the schema (absent keys become None, mixed-type columns are cast). Parquet goes
through `datasets.load_dataset("parquet", ...)`, which reads local files without the
network; its Arrow cache goes to a temporary directory removed afterwards, so
nothing is written under ~/.cache.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)
ON_MALFORMED = ("error", "skip")
SUFFIXES = (".jsonl", ".parquet")


def _nearest(key: str, keys) -> str:
    close = difflib.get_close_matches(key, [str(k) for k in keys], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class MalformedRowError(ValueError):
    """A row (or a Parquet file's columns) without a usable prompt or answer. `field` is
    "prompt_key" or "answer_key" when the row lacks that key (the caller's setting
    may name the wrong field), else None."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _check_row(row: Any, prompt_key: str, answer_key: str) -> tuple[str, str | None] | None:
    """(why the row is malformed, the missing key's role or None), or None when it is usable."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}", None
    for key, role in ((prompt_key, "prompt_key"), (answer_key, "answer_key")):
        if key not in row:
            return f"no key {key!r} (keys: {', '.join(map(str, row))}){_nearest(key, row)}", role
    prompt = row[prompt_key]
    if not isinstance(prompt, str):
        return f"{prompt_key!r} must be a string, got {type(prompt).__name__}", None
    if not prompt.strip():
        return f"{prompt_key!r} is empty", None
    if row[answer_key] is None:
        return f"{answer_key!r} is null", None
    return None


def _jsonl_rows(path: pathlib.Path):
    """(where, parsed row or None, (problem, None) or None) per non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, None, (f"not valid UTF-8 ({e})", None)
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line), None
            except json.JSONDecodeError as e:
                yield where, None, (f"not valid JSON ({e})", None)


def _parquet_rows(path: pathlib.Path, prompt_key: str, answer_key: str):
    import datasets  # heavy (pyarrow, pandas): only when a Parquet file is read

    with tempfile.TemporaryDirectory(prefix="rlhf_exact_datasets_") as cache:
        ds = datasets.load_dataset("parquet", data_files=[str(path)], split="train", cache_dir=cache,
                                   keep_in_memory=True)
        for key, role in ((prompt_key, "prompt_key"), (answer_key, "answer_key")):
            if key not in ds.column_names:
                raise MalformedRowError(f"{path}: no column {key!r} (columns: {', '.join(ds.column_names)})"
                                        f"{_nearest(key, ds.column_names)}", role)
        rows = ds.to_list()
    for i, row in enumerate(rows):
        yield f"{path}:row {i}", row, None


def load_prompts(files: Sequence[str | os.PathLike], prompt_key: str = "prompt", answer_key: str = "answer",
                 on_malformed: str = "error") -> tuple[list[dict], int]:
    """Load and validate prompt rows from .jsonl / .parquet files, in file order.

    Returns (rows, num_skipped); num_skipped is 0 with on_malformed="error".
    """
    if on_malformed not in ON_MALFORMED:
        raise ValueError(f"on_malformed must be one of {ON_MALFORMED}, got {on_malformed!r}")
    if isinstance(files, (str, os.PathLike)) or not files:
        raise ValueError(f"files must be a non-empty list of paths, got {files!r}")
    out: list[dict] = []
    skipped, first_problem = 0, None
    for file in files:
        path = pathlib.Path(file)
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(SUFFIXES)})")
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path, prompt_key, answer_key)
        for where, row, problem in rows:
            problem = problem or _check_row(row, prompt_key, answer_key)
            if problem is not None:
                if on_malformed == "error":
                    raise MalformedRowError(f"{where}: malformed row: {problem[0]}", problem[1])
                skipped += 1
                first_problem = first_problem or f"{where}: {problem[0]}"
                continue
            out.append({**row, "prompt": row[prompt_key], "answer": row[answer_key], "row_id": where})
    if skipped:
        logger.warning("skipped %d malformed prompt rows; first: %s", skipped, first_problem)
    if not out:
        detail = f"; {skipped} malformed rows skipped, first: {first_problem}" if skipped else ""
        raise MalformedRowError(f"no usable prompt rows in {', '.join(map(str, files))}{detail}")
    return out, skipped
