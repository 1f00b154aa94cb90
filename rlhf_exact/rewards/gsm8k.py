"""GSM8K correctness and answer-format rewards.

The final answer is taken from the completion by our own small extractor (the LAST
of `\\boxed{...}`, `#### x` or `The answer is x` in the text), then compared with the
gold answer (GSM8K gold solutions end with "#### 42") by the maintained `math_verify`
library (`parse` + `verify`), so "72", "72.00", "$72$" and "\\frac{144}{2}" all match 72.
A completion with none of the three markers gets 0: the answer format is part of
the task (the prompt asks for it).

Hangs. math_verify guards sympy with `signal.alarm`, which only works in the main
thread (elsewhere it raises ValueError). So: in the main thread we pass its timeouts
(TIMEOUT_S); in any other thread we pass None and bound the work ourselves: the
extracted answer is at most MAX_ANSWER_CHARS characters and may not contain `^`, `!`
or `**` (towers and factorials are what make sympy slow, and never a GSM8K answer).

    from rlhf_exact.rewards.gsm8k import gsm8k_reward
    gsm8k_reward("... so #### 1,000", None, {"answer": "...\\n#### 1000"})  # 1.0
"""
from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

TIMEOUT_S = 5  # math_verify's per-call timeout where it can use signals (main thread)
MAX_ANSWER_CHARS = 64  # longer "answers" are wrong for GSM8K and could make sympy slow
_SLOW_OFF_MAIN = re.compile(r"\^|!|\*\*")

_HASH = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"the (?:final )?answer is:?[ \t]*(.+?)(?:\.\s|\.?[ \t]*$)", re.IGNORECASE | re.MULTILINE)
_NUMBER_AFTER_HASH = re.compile(r"####[ \t]*\$?-?(?:\d[\d,]*)?\.?\d")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_THEN_WORDS = re.compile(r"(-?\d+(?:\.\d+)?|-?\.\d+)\s*[A-Za-z][A-Za-z\s]*")


def _boxed(text: str) -> list[tuple[int, str]]:
    """(position, content) of every \\boxed{...}, with nested braces matched."""
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), text[m.end():i - 1]))
    return out


def _normalize(ans: str) -> str:
    """Strip what GSM8K golds never have: $ signs, thousands commas, %, a final period,
    words after a number ("12 apples": LaTeX would read it as a product)."""
    ans = _THOUSANDS.sub("", ans.strip().replace("\\$", "").replace("$", ""))
    ans = ans.rstrip(".").rstrip("%").replace("\\%", "").strip()
    m = _NUMBER_THEN_WORDS.fullmatch(ans)
    return m.group(1) if m else ans


def extract_answer(completion: str) -> str | None:
    """The completion's final answer (normalised), or None when it has no marker."""
    found = _boxed(completion)
    found += [(m.start(), m.group(1)) for m in _HASH.finditer(completion)]
    found += [(m.start(), m.group(1)) for m in _ANSWER_IS.finditer(completion)]
    found = [(pos, ans) for pos, ans in found if ans.strip()]
    if not found:
        return None
    return _normalize(max(found)[1])


def gold_answer(answer: Any) -> str:
    """The gold final answer: after the last "####" of a GSM8K solution, commas removed
    (a bare value, e.g. an int from another dataset, is used as is)."""
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return _normalize(text)


def answers_match(gold: str, pred: str) -> bool:
    """math_verify equivalence of two answer strings (see the module docstring for timeouts)."""
    from math_verify import parse, verify  # imports sympy: deferred until the first reward

    in_main = threading.current_thread() is threading.main_thread()
    if len(pred) > MAX_ANSWER_CHARS or (not in_main and _SLOW_OFF_MAIN.search(pred)):
        return False
    timeout = TIMEOUT_S if in_main else None
    # Wrapped in $...$ so the LaTeX extractor reads "\frac{1}{2}" and "72" alike.
    g = parse(f"${gold}$", parsing_timeout=timeout)
    p = parse(f"${pred}$", parsing_timeout=timeout)
    return bool(g) and bool(p) and verify(g, p, timeout_seconds=timeout)


def gsm8k_reward(completion_text: str, completion_ids: Sequence[int] | None, sample: Mapping[str, Any]) -> float:
    """1.0 if the completion's final answer equals sample["answer"]'s, else 0.0."""
    pred = extract_answer(completion_text)
    if pred is None:
        return 0.0
    return 1.0 if answers_match(gold_answer(sample["answer"]), pred) else 0.0


def format_reward(completion_text: str, completion_ids: Sequence[int] | None, sample: Mapping[str, Any]) -> float:
    """1.0 if the completion has a final-answer marker: "#### <number>" or a non-empty
    \\boxed{...}; else 0.0. Correctness is not checked."""
    if _NUMBER_AFTER_HASH.search(completion_text):
        return 1.0
    return 1.0 if any(c.strip() for _, c in _boxed(completion_text)) else 0.0
