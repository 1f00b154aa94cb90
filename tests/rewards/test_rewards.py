"""Rewards: GSM8K answer checking (math_verify, also off the main thread), format,
synthetic, the registry and the weighted combination with its error policy.

    .venv/bin/python -m pytest -q tests/rewards
"""
import concurrent.futures
import json
import math
import threading

import pytest

from rlhf_exact.rewards import REWARDS, RewardError, compute_reward_terms, compute_rewards, get_reward, register_reward
from rlhf_exact.rewards.gsm8k import extract_answer, format_reward, gold_answer, gsm8k_reward
from rlhf_exact.rewards.synthetic import synthetic_reward

GOLD = {"answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072"}


@pytest.mark.parametrize("completion, expected", [
    ("48 + 1024 = 1072\n#### 1072", 1.0),
    ("so the total is\n#### 1,072", 1.0),
    ("The answer is 1072.", 1.0),
    ("The answer is $1,072.00.", 1.0),
    ("We get \\boxed{1072} clips.", 1.0),
    ("We get \\boxed{\\frac{2144}{2}}", 1.0),
    ("#### 1072 clips", 1.0),
    ("#### 1071", 0.0),
    ("The answer is 1072. Wait, no.\n#### 1000", 0.0),   # the LAST marker is the final answer
    ("#### 1000 ... actually \\boxed{1072}", 1.0),
    ("1072", 0.0),                                       # no marker: the format is part of the task
    ("", 0.0),
])
def test_gsm8k_reward(completion, expected):
    assert gsm8k_reward(completion, [], GOLD) == expected


def test_extraction_helpers():
    assert gold_answer(GOLD["answer"]) == "1072"
    assert gold_answer(18) == "18"
    assert extract_answer("x \\boxed{a{b}c} y") == "a{b}c"
    assert extract_answer("The final answer is: 25%.") == "25"
    assert extract_answer("nothing here") is None


def test_gsm8k_on_real_rows(gsm8k_dir):
    with open(gsm8k_dir / "test.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(20)]
    for row in rows:
        gold = row["answer"].rsplit("####", 1)[1].strip()
        assert gsm8k_reward(f"Reasoning...\n#### {gold}", [], row) == 1.0, row["answer"]
        assert gsm8k_reward(f"Reasoning...\n#### {gold}1", [], row) == 0.0, row["answer"]


def test_gsm8k_off_the_main_thread():
    # math_verify's signal timeouts raise ValueError outside the main thread; we pass None there.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda c: gsm8k_reward(c, [], GOLD), ["#### 1,072", "\\boxed{1072}", "#### 7"]))
    assert got == [1.0, 1.0, 0.0]
    # Off the main thread, powers/factorials are refused (sympy could hang, no timeout there).
    result = {}
    t = threading.Thread(target=lambda: result.update(r=gsm8k_reward("#### 2^{10}", [], {"answer": "1024"})))
    t.start()
    t.join(timeout=60)
    assert result == {"r": 0.0}
    assert gsm8k_reward("#### 2^{10}", [], {"answer": "1024"}) == 1.0  # main thread: guarded by the alarm


@pytest.mark.parametrize("completion, expected", [
    ("#### 42", 1.0), ("####-3.5", 1.0), ("#### $1,000", 1.0), ("\\boxed{x}", 1.0),
    ("#### forty", 0.0), ("\\boxed{ }", 0.0), ("The answer is 4", 0.0), ("", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion, [], {}) == expected


def test_synthetic_reward():
    sample = {"answer": [5, 7]}
    assert synthetic_reward("", [5, 6, 7, 2], sample) == 0.5   # 2 of 4 tokens; the stop token is a miss
    assert synthetic_reward("", [7, 7, 5], sample) == 1.0
    assert synthetic_reward("", [], sample) == 0.0
    with pytest.raises(ValueError, match="needs completion_ids"):
        synthetic_reward("text", None, sample)


def test_registry():
    assert set(REWARDS) >= {"gsm8k", "format", "synthetic"}
    assert get_reward("format") is format_reward
    with pytest.raises(ValueError, match=r"unknown reward 'fromat'.*format, gsm8k, synthetic.*did you mean 'format'"):
        get_reward("fromat")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("gsm8k")(lambda t, i, s: 0.0)


def test_compute_rewards_weighted_sum():
    # completion 0: gsm8k 1 * 1.0 + format 1 * 0.25 = 1.25; completion 1: 0 + 0.25; completion 2: 0 + 0
    texts = ["#### 1072", "#### 9", "no"]
    r, err = compute_rewards([("gsm8k", 1.0), ("format", 0.25)], texts, [[], [], []], [GOLD] * 3)
    assert r == [1.25, 0.25, 0.0]
    assert err == [None, None, None]


def test_compute_rewards_errors(monkeypatch):
    def flaky(text, ids, sample):
        if sample["answer"] == "boom":
            raise KeyError("missing field")
        return float("nan") if sample["answer"] == "nan" else 1.0

    monkeypatch.setitem(REWARDS, "flaky", flaky)
    samples = [{"answer": "ok"}, {"answer": "boom", "row_id": "f.jsonl:7"}, {"answer": "nan"}]
    with pytest.raises(RewardError, match=r"reward 'flaky' failed on sample 1 \(row f.jsonl:7\): KeyError"):
        compute_rewards([("format", 1.0), ("flaky", 2.0)], ["#### 1"] * 3, [[]] * 3, samples, on_error="stop")
    r, err = compute_rewards([("format", 1.0), ("flaky", 2.0)], ["#### 1"] * 3, [[]] * 3, samples, on_error="skip")
    assert r[0] == 3.0 and math.isnan(r[1]) and math.isnan(r[2])  # 1 + 2*1; failures have no reward (not 1.0)
    assert err[0] is None
    assert "sample 1" in err[1] and "missing field" in err[1]
    assert "sample 2" in err[2] and "non-finite" in err[2]


def test_compute_reward_terms_gives_each_function_once(monkeypatch):
    calls = []

    def flaky(text, ids, sample):
        calls.append(sample["answer"])
        if sample["answer"] == "boom":
            raise KeyError("missing field")
        return 0.5

    monkeypatch.setitem(REWARDS, "flaky", flaky)
    samples = [{"answer": "ok"}, {"answer": "boom"}]
    r, err, values = compute_reward_terms([("flaky", 2.0), ("format", 1.0)], ["#### 1", "no"], [[], []], samples,
                                          on_error="skip")
    assert calls == ["ok", "boom"]  # one call per sample
    assert r[0] == 2.0 and math.isnan(r[1]) and err[0] is None and "reward 'flaky' failed on sample 1" in err[1]
    assert values[0] == {"flaky": 0.5, "format": 1.0}
    assert math.isnan(values[1]["flaky"]) and values[1]["format"] == 0.0  # the other function still counts
    r2, err2 = compute_rewards([("flaky", 2.0), ("format", 1.0)], ["#### 1", "no"], [[], []], samples,
                               on_error="skip")
    assert r2[0] == r[0] and math.isnan(r2[1]) and err2 == err


def test_compute_rewards_bad_arguments():
    with pytest.raises(ValueError, match="unknown reward 'gsm9k'"):
        compute_rewards([("gsm9k", 1.0)], ["a"], [[]], [{}])
    with pytest.raises(ValueError, match=r"completions \(2\), completion_ids \(1\) and samples \(2\)"):
        compute_rewards([("format", 1.0)], ["a", "b"], [[]], [{}, {}])
    with pytest.raises(ValueError, match="on_error"):
        compute_rewards([("format", 1.0)], ["a"], [[]], [{}], on_error="ignore")
    with pytest.raises(ValueError, match="finite"):
        compute_rewards([("format", math.inf)], ["a"], [[]], [{}])
    with pytest.raises(ValueError, match="empty"):
        compute_rewards([], ["a"], [[]], [{}])
