"""load_prompts on GSM8K and on hand-made malformed JSON-lines / Parquet files;
the GSM8K prompt formatter.

    .venv/bin/python -m pytest -q tests/data
"""

import pytest

from rlhf_exact.data import GSM8K_ANSWER_KEY, GSM8K_PROMPT_KEY, format_gsm8k_prompt, load_prompts


def test_load_gsm8k(gsm8k_dir):
    rows, skipped = load_prompts([gsm8k_dir / "test.jsonl"], GSM8K_PROMPT_KEY, GSM8K_ANSWER_KEY)
    assert skipped == 0 and len(rows) == 1319
    first = rows[0]
    assert first["prompt"] == first["question"] and first["prompt"].startswith("Janet")
    assert first["answer"].endswith("#### 18")
    assert first["row_id"] == f"{gsm8k_dir / 'test.jsonl'}:1"


def test_load_two_files_in_order(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "p1", "answer": 1}\n\n{"prompt": "p2", "answer": "2", "extra": true}\n')
    b.write_text('{"prompt": "p3", "answer": [3]}')
    rows, skipped = load_prompts([a, b])
    assert [r["prompt"] for r in rows] == ["p1", "p2", "p3"]
    assert [r["row_id"] for r in rows] == [f"{a}:1", f"{a}:3", f"{b}:1"]  # blank line 2 is ignored
    assert rows[1]["extra"] is True and skipped == 0


BAD_LINES = [  # (line 2 of the file, the reason the error must give)
    ('{"prompt": "p", "answer": ', "not valid JSON"),
    ('{"question": "p", "answer": "a"}', "no key 'prompt'"),
    ('{"prompt": "p"}', "no key 'answer'"),
    ('{"prompt": 7, "answer": "a"}', "'prompt' must be a string, got int"),
    ('{"prompt": "  ", "answer": "a"}', "'prompt' is empty"),
    ('{"prompt": "p", "answer": null}', "'answer' is null"),
    ('["p", "a"]', "expected a JSON object, got list"),
]


@pytest.mark.parametrize("line, reason", BAD_LINES)
def test_malformed_jsonl_line_names_file_and_line(tmp_path, line, reason):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok", "answer": "1"}\n' + line + "\n")
    with pytest.raises(ValueError) as e:
        load_prompts([f])
    assert f"{f}:2: malformed row" in str(e.value) and reason in str(e.value)


def test_malformed_jsonl_skip_counts(tmp_path):
    f = tmp_path / "mixed.jsonl"
    body = '{"prompt": "ok1", "answer": "1"}\n' + "\n".join(line for line, _ in BAD_LINES) + "\n"
    f.write_bytes(body.encode() + b'{"prompt": "\xff", "answer": 1}\n{"prompt": "ok2", "answer": "2"}\n')
    rows, skipped = load_prompts([f], on_malformed="skip")
    assert [r["prompt"] for r in rows] == ["ok1", "ok2"]
    assert skipped == len(BAD_LINES) + 1  # + the invalid UTF-8 line


def test_invalid_utf8_line(tmp_path):
    f = tmp_path / "utf8.jsonl"
    f.write_bytes(b'{"prompt": "ok", "answer": 1}\n{"prompt": "\xff", "answer": 1}\n')
    with pytest.raises(ValueError, match=f"{f}:2: malformed row: not valid UTF-8"):
        load_prompts([f])


def test_all_rows_skipped_is_an_error(tmp_path):
    f = tmp_path / "wrong_key.jsonl"
    f.write_text('{"question": "p", "answer": "a"}\n' * 3)
    with pytest.raises(ValueError, match=r"no usable prompt rows.*3 malformed rows skipped.*did you mean 'question'"):
        load_prompts([f], prompt_key="questions", on_malformed="skip")


def _write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet(tmp_path):
    f = _write_parquet(tmp_path / "p.parquet", {"question": ["q0", None, "q2"], "answer": ["0", "1", None]})
    with pytest.raises(ValueError, match=f"{f}:row 1: malformed row: 'question' must be a string, got NoneType"):
        load_prompts([f], "question")
    rows, skipped = load_prompts([f], "question", on_malformed="skip")
    assert skipped == 2 and [r["prompt"] for r in rows] == ["q0"] and rows[0]["row_id"] == f"{f}:row 0"
    with pytest.raises(ValueError, match=r"no column 'questio' \(columns: question, answer\); did you mean 'question'"):
        load_prompts([f], "questio", on_malformed="skip")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_prompts([tmp_path / "x.csv"])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts([tmp_path / "nope.jsonl"])
    with pytest.raises(ValueError, match="non-empty list"):
        load_prompts(str(tmp_path / "a.jsonl"))
    with pytest.raises(ValueError, match="on_malformed"):
        load_prompts([tmp_path / "a.jsonl"], on_malformed="warn")


def test_format_gsm8k_prompt():
    p = format_gsm8k_prompt("  How many apples?\n")
    assert p.startswith("How many apples?\n") and "'#### <number>'" in p
    with pytest.raises(ValueError, match="non-empty string"):
        format_gsm8k_prompt("")
