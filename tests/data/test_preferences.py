"""Preference pairs (rlhf_exact/data/preferences.py): jsonl of text or token ids read
with the tiny model's real tokenizer; a bad line is one `file:line` error naming the
field (or skipped and counted); synthetic pairs prefer the completion with more target
tokens."""
import json

import pytest

from rlhf_exact.data import SyntheticTask
from rlhf_exact.data.preferences import MIN_REWARD_GAP, load_preference_pairs, synthetic_pairs, write_pairs_jsonl
from rlhf_exact.models.tiny import CHAT_TEMPLATE, train_tokenizer
from rlhf_exact.rewards.synthetic import synthetic_reward


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(512)


def _write(tmp_path, lines):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return f


def _load(f, tok, **kw):
    return load_preference_pairs([f], tok, **({"vocab_size": 512, "max_tokens": 64} | kw))


def test_text_and_token_ids(tmp_path, tok):
    f = _write(tmp_path, [{"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}, "",
                          {"prompt": [7, 8], "chosen": [9], "rejected": [10, 11]}])
    rows, skipped = _load(f, tok, chat_template=CHAT_TEMPLATE)
    assert skipped == 0 and len(rows) == 2
    from rlhf_exact.data import render_chat_prompt

    want = tok.encode(render_chat_prompt(CHAT_TEMPLATE, "What is 2+3?"), add_special_tokens=False).ids
    assert rows[0]["prompt_ids"] == want and rows[0]["chosen_ids"] == tok.encode("5").ids
    assert rows[1] == {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11], "row_id": f"{f}:3"}


@pytest.mark.parametrize("line, words", [
    ("{not json", ["not valid JSON"]),
    ([1, 2], ["expected a JSON object"]),
    ({"prompt": "a", "chosen": "b", "rejectd": "c"}, ["no field 'rejected'", "did you mean 'rejectd'"]),
    ({"prompt": "a", "chosen": 5, "rejected": "c"}, ["'chosen' must be a string or a list of token ids"]),
    ({"prompt": [1, 600], "chosen": [3], "rejected": [4]}, ["'prompt' has token id 600 outside [0, 512)"]),
    ({"prompt": "a", "chosen": "", "rejected": "c"}, ["'chosen' is empty"]),
    ({"prompt": [1], "chosen": [3, 4], "rejected": [3, 4]}, ["the same tokens"]),
    ({"prompt": [1] * 60, "chosen": [3] * 5, "rejected": [4]}, ["65 tokens > preference.max_tokens=64"]),
])
def test_bad_line_is_one_line_naming_file_and_line(tmp_path, tok, line, words):
    good = {"prompt": [1], "chosen": [3], "rejected": [4]}
    f = _write(tmp_path, [good, line])
    with pytest.raises(ValueError) as e:
        _load(f, tok)
    msg = str(e.value)
    assert msg.startswith(f"{f}:2: malformed pair: ") and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    rows, skipped = _load(f, tok, on_malformed="skip")
    assert skipped == 1 and len(rows) == 1


def test_synthetic_pairs_prefer_more_target_tokens(tmp_path, tok):
    task = SyntheticTask(seed=0, num_target_sets=2, reserved_ids=(0, 1, 2))
    pairs = synthetic_pairs(task, 200, 0, 8)
    assert pairs == synthetic_pairs(task, 200, 0, 8)  # deterministic
    assert [p["row_id"] for p in synthetic_pairs(task, 3, 200, 8)] == [f"synthetic_pairs:{i}" for i in (200, 201, 202)]
    rows = task.rows(200)
    for p, row in zip(pairs, rows):
        assert p["prompt_ids"] == row["prompt_ids"]
        rule = [synthetic_reward("", p[k], row) for k in ("chosen_ids", "rejected_ids")]
        assert rule[0] >= rule[1] + MIN_REWARD_GAP
    # What a policy can do is covered: every length 1..8, completions that end in a stop
    # id, and the other set's targets among the misses ("any target token" does not rank them).
    completions = [c for p in pairs for c in (p["chosen_ids"], p["rejected_ids"])]
    assert {len(c) for c in completions} == set(range(1, 9))
    assert 0.3 < sum(c[-1] in task.reserved_ids for c in completions) / len(completions) < 0.7
    other = set(task.target_sets[0]) | set(task.target_sets[1])
    misses = [t for p, row in zip(pairs, rows) for t in p["chosen_ids"][:-1] + p["rejected_ids"][:-1]
              if t not in row["answer"] and t not in task.reserved_ids]
    assert 0.3 < sum(t in other for t in misses) / len(misses) < 0.7
    rows, _ = _load(write_pairs_jsonl(pairs, tmp_path / "syn.jsonl"), tok)
    assert [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows] == \
        [{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs]
