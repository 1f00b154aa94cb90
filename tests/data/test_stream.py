"""PromptStream: seeded per-epoch permutations, batches across epoch ends, and a
resumed stream that sees exactly the batches of an uninterrupted one.

    .venv/bin/python -m pytest -q tests/data/test_stream.py
"""
import json

import pytest

from rlhf_exact.data import PromptStream

ROWS = [{"prompt": f"p{i}", "answer": i} for i in range(10)]


def ids(batch):
    return [r["answer"] for r in batch]


def test_each_epoch_is_a_permutation_and_batches_span_epochs():
    s = PromptStream(ROWS, seed=3, batch_size=4)
    seen = sum((ids(next(s)) for _ in range(5)), [])  # 20 rows = 2 epochs exactly
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a new order each epoch
    assert s.state_dict() == {"epoch": 2, "index": 0, "seed": 3, "num_rows": 10}


def test_seeded():
    a = [ids(next(PromptStream(ROWS, 1, 10)))]
    assert a == [ids(next(PromptStream(ROWS, 1, 10)))]
    assert a != [ids(next(PromptStream(ROWS, 2, 10)))]


def test_resume_sees_the_same_batches():
    straight = PromptStream(ROWS, seed=0, batch_size=3)
    expected = [ids(next(straight)) for _ in range(9)]
    first = PromptStream(ROWS, seed=0, batch_size=3)
    got = [ids(next(first)) for _ in range(4)]  # stops mid-epoch 1 (12 rows read)
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"epoch": 1, "index": 2, "seed": 0, "num_rows": 10}
    resumed = PromptStream(ROWS, seed=0, batch_size=3)
    resumed.load_state_dict(state)
    got += [ids(next(resumed)) for _ in range(5)]
    assert got == expected


def test_batch_larger_than_the_rows():
    b = ids(next(PromptStream(ROWS[:3], 0, 7)))
    assert len(b) == 7 and sorted(b[:3]) == [0, 1, 2] and sorted(b[3:6]) == [0, 1, 2]


def test_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        PromptStream([], 0, 1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PromptStream(ROWS, 0, 0)
    s = PromptStream(ROWS, 0, 2)
    with pytest.raises(ValueError, match="seed 5, this stream has seed 0"):
        s.load_state_dict({"epoch": 0, "index": 0, "seed": 5, "num_rows": 10})
    with pytest.raises(ValueError, match="for 11 rows, this stream has 10"):
        s.load_state_dict({"epoch": 0, "index": 0, "seed": 0, "num_rows": 11})
    with pytest.raises(ValueError, match="out of range"):
        s.load_state_dict({"epoch": 0, "index": 10, "seed": 0, "num_rows": 10})
    with pytest.raises(ValueError, match=r"lacks \['num_rows'\]"):
        s.load_state_dict({"epoch": 0, "index": 0, "seed": 0})


def test_no_shuffle_is_file_order():
    s = PromptStream(ROWS, seed=0, batch_size=4, shuffle=False)
    assert [ids(next(s)) for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
