"""load_prompt_rows: config -> tokenized rows, with the tiny model's tokenizer and
chat template (trained locally, no download).

    .venv/bin/python -m pytest -q tests/data/test_loader.py
"""
import json
from types import SimpleNamespace

import pytest

from rlhf_exact.data import SyntheticTask, load_prompt_rows, read_chat_template, render_chat_prompt
from rlhf_exact.models.tiny import CHAT_TEMPLATE, train_tokenizer



def data_cfg(num_prompts=16, **kw):
    d = dict(name="gsm8k", train_files=[], prompt_key="question", answer_key="answer", on_malformed="error",
             max_prompt_tokens=256, synthetic=SimpleNamespace(num_prompts=num_prompts, num_targets=16, prompt_len=8,
                                                                num_target_sets=1, vocab_size=None))
    d.update(kw)
    return SimpleNamespace(data=SimpleNamespace(**d))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(512)


def test_render_tiny_chat_template():
    assert render_chat_prompt(CHAT_TEMPLATE, "2+2?") == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="chat template: no system"):
        render_chat_prompt("{{ raise_exception('no system') }}", "x")


def test_read_chat_template(tmp_path):
    assert read_chat_template(tmp_path) is None
    named = {"chat_template": [{"name": "default", "template": "T"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(named))
    assert read_chat_template(tmp_path) == "T"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert read_chat_template(tmp_path) == "J"


def test_gsm8k_rows(tok, tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "Ann has 3 pens. How many?", "answer": "#### 3"}\n'
                 '{"question": "' + "very long question " * 40 + '", "answer": "#### 1"}\n')
    rows = load_prompt_rows(data_cfg(train_files=[str(f)], max_prompt_tokens=1000), tok, CHAT_TEMPLATE)
    r = rows[0]
    assert r["prompt_text"].startswith("<|im_start|>user\nAnn has 3 pens. How many?\n")
    assert "'#### <number>'" in r["prompt_text"]
    assert r["prompt_ids"] == tok.encode(r["prompt_text"], add_special_tokens=False).ids
    assert r["prompt_ids"][0] == tok.token_to_id("<|im_start|>")  # the template's special token, one id
    assert r["answer"] == "#### 3" and r["row_id"] == f"{f}:1"
    n0 = len(r["prompt_ids"])
    with pytest.raises(ValueError, match=f"{f}:2: prompt has \\d+ tokens > data.max_prompt_tokens={n0}"):
        load_prompt_rows(data_cfg(train_files=[str(f)], max_prompt_tokens=n0), tok, CHAT_TEMPLATE)
    rows = load_prompt_rows(data_cfg(train_files=[str(f)], max_prompt_tokens=n0, on_malformed="skip"), tok,
                            CHAT_TEMPLATE)
    assert [x["row_id"] for x in rows] == [f"{f}:1"]


def test_gsm8k_test_split(tok, gsm8k_dir):
    rows = load_prompt_rows(data_cfg(train_files=[str(gsm8k_dir / "test.jsonl")], max_prompt_tokens=4096), tok)
    assert len(rows) == 1319 and all(r["prompt_ids"] for r in rows)


def test_synthetic_rows(tok):
    rows = load_prompt_rows(data_cfg(name="synthetic", num_prompts=5), tok)
    assert [r["prompt_ids"] for r in rows] == [r["prompt_ids"] for r in SyntheticTask(seed=0).rows(5)]
    assert rows[0]["row_id"] == "synthetic:0" and isinstance(rows[0]["prompt"], str)


def test_synthetic_rows_over_a_model_vocab_larger_than_the_tokenizer(tok):
    """data.synthetic.vocab_size: ids beyond the tokenizer's 512 (a 0.6B-shaped model's 151936
    rows) are drawn; the prompt text decodes the ids that have text and skips the rest."""
    cfg = data_cfg(name="synthetic", num_prompts=64)
    cfg.data.synthetic.vocab_size, cfg.data.synthetic.num_targets = 151936, 4096
    rows = load_prompt_rows(cfg, tok)
    task = SyntheticTask(seed=0, vocab_size=151936, num_targets=4096)
    assert [r["prompt_ids"] for r in rows] == [r["prompt_ids"] for r in task.rows(64)]
    assert max(i for r in rows for i in r["prompt_ids"] + r["answer"]) >= 512
    assert all(isinstance(r["prompt"], str) for r in rows)
