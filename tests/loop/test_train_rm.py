"""`python -m rlhf_exact.train_rm` end to end through the command line, with the real
parts: a private Ray, an FSDP2 group of two gloo ranks, safetensors checkpoints and the
exported Hugging Face reward model.

  test_tiny_rm_learns_and_resumes   recipe=rm_qwen3_tiny: held-out accuracy of the initial
        model about 0.5, after 60 steps >= 0.9; the export loads in transformers as a
        Qwen3ForSequenceClassification with num_labels=1. A run stopped after step 40 (its
        checkpoint; the command ends there) and continued with run.resume=auto to step
        60 gives the same metrics at every step and bitwise the same final weights.
  test_grpo_against_the_tiny_rm     recipe=grpo_qwen3_tiny_rm for 12 steps against the
        reward model that run exported: parity exact at every step, the reward model's
        score rising, and the held-out synthetic rule reward (weight 0, never optimized)
        rising with it.
  test_bad_pairs_file_is_one_line   a malformed line of preference.train_files: exit 2,
        one line naming file:line and the field, no run directory.

    python -m pytest tests/loop/test_train_rm.py -q
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ray")

from rlhf_exact.config.compose import repo_root

from .runs import assert_same_run, final_weights, metrics


def train_rm(tmp_path, name, *overrides, timeout=900):
    p = subprocess.run([sys.executable, "-m", "rlhf_exact.train_rm", "recipe=rm_qwen3_tiny",
                        f"run.output_dir={tmp_path}", f"run.name={name}", "logging.wandb_mode=disabled",
                        "logging.progress_bars=false", *overrides],
                       capture_output=True, text=True, cwd=repo_root(), env=dict(os.environ), timeout=timeout)
    return p, tmp_path / name


@pytest.fixture(scope="module")
def whole_rm(tmp_path_factory):
    """The uninterrupted recipe=rm_qwen3_tiny run (60 steps): (process, run directory)."""
    p, whole_dir = train_rm(tmp_path_factory.mktemp("rm"), "whole")
    assert p.returncode == 0, p.stderr[-3000:]
    return p, whole_dir


@pytest.mark.slow
def test_tiny_rm_learns_and_resumes(tmp_path, whole_rm):
    p, whole_dir = whole_rm
    rows = metrics(whole_dir)
    assert [m["step"] for m in rows] == list(range(1, 61))
    assert 0.35 <= rows[0]["heldout/initial/accuracy"] <= 0.65, rows[0]
    assert rows[-1]["heldout/accuracy"] >= 0.9, rows[-1]
    assert [m["step"] for m in rows if "heldout/accuracy" in m] == [10, 20, 30, 40, 50, 60]
    assert "held-out accuracy: initial" in p.stdout

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(whole_dir / "final_model")
    assert type(hf).__name__ == "Qwen3ForSequenceClassification" and hf.config.num_labels == 1
    assert torch.isfinite(hf(torch.tensor([[5, 6, 7, 8]])).logits).all()

    p, part_dir = train_rm(tmp_path, "part", "run.steps=40")
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(metrics(part_dir)) == 40
    # a resume continues the run's own config.yaml (run.steps=40): the longer run is asked for
    p, same_dir = train_rm(tmp_path, "part", "run.resume=auto", "run.steps=60")
    assert p.returncode == 0, p.stderr[-3000:]
    assert same_dir == part_dir and "resumed from" in p.stderr and "step_000040" in p.stderr
    resumed = metrics(part_dir)
    assert [m["step"] for m in resumed] == list(range(1, 61))
    assert_same_run(rows, final_weights(whole_dir), part_dir)


@pytest.mark.slow
def test_grpo_against_the_tiny_rm(tmp_path, whole_rm):
    """recipe=grpo_qwen3_tiny_rm, 12 steps, against the reward model of the run above."""
    rm = whole_rm[1] / "final_model"
    p = subprocess.run([sys.executable, "-m", "rlhf_exact.train", "recipe=grpo_qwen3_tiny_rm", "run.steps=12",
                        f"reward.model.path={rm}", "eval.every_steps=6", f"run.output_dir={tmp_path}", "run.name=grpo",
                        "logging.wandb_mode=disabled", "logging.progress_bars=false"],
                       capture_output=True, text=True, cwd=repo_root(), env=dict(os.environ), timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = metrics(tmp_path / "grpo")
    assert [m["step"] for m in rows] == list(range(1, 13))
    assert all(m["parity/kl"] == 0.0 and m["parity/tokens_bitwise_equal_frac"] == 1.0 for m in rows)
    assert all(m["reward/mean"] == m["reward/model_mean"] for m in rows)  # the rule has weight 0
    first, last = [sum(m["reward/model_mean"] for m in part) / 3 for part in (rows[:3], rows[-3:])]
    assert last > first + 3.0, (first, last)  # the reward model's score rises
    ev = [m["eval/first_reward_mean"] for m in rows if "eval/first_reward_mean" in m]
    assert len(ev) == 2 and ev[1] > ev[0] + 0.1, ev  # and the rule its preferences came from


def test_bad_pairs_file_is_one_line(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": [5], "chosen": [6], "rejected": [7]}) + "\n"
                 + json.dumps({"prompt": [5], "chosen": [6]}) + "\n")
    p, run_dir = train_rm(tmp_path, "bad", "preference.name=jsonl", f"preference.train_files=[{f}]", timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: preference.train_files: {f}:2: malformed pair: "
                                                   "no field 'rejected'"), p.stderr
    assert not run_dir.exists()
