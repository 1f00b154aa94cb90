"""Faults as a user meets them, with real processes: `python -m rlhf_exact.train` on the
tiny recipe in a process group of its own, as a terminal runs it.

  test_ctrl_c_resume_and_a_corrupt_checkpoint
        an uninterrupted run, and the same run interrupted by SIGINT to its process
        group (Ctrl-C): exit 130, "interrupted after step N; resume with
        run.resume=auto run.name=...", no traceback; then its newest checkpoint is
        corrupted by content (same size) and `run.resume=auto` says so, falls back to
        the previous checkpoint and ends with metrics and final weights equal to the
        uninterrupted run's. After each run no Ray process and no Ray temp dir is left.
  test_sigterm_is_ctrl_c_and_the_hint_resumes_the_same_run
        SIGTERM to the process group (`timeout`, a scheduler) after step 2 of a 4-step run
        of grpo_qwen3_tiny_tools: exit 130, the resume hint as the last line, no traceback,
        no Ray crash dump, nothing of Ray left behind. Then the hint, pasted alone, resumes
        with the run's saved config (not the default recipe) and finishes at step 4.
  test_parity_violation_names_its_step
        the samplers get wrong weights in the sync after step 1 (tests/loop/corrupt_sync.py)
        and run step 2 on them. on_parity_mismatch=warn: "EXACT MODE VIOLATED at step 2"
        and the console line "step 2/3 ... parity VIOLATED" name the same step, the only
        one whose metrics differ; the console (run.console=quiet) holds at most 60 lines
        and no INFO line of an actor: those are in the run's console.log. stop: exit 3
        after the console line of step 1, the error "EXACT MODE VIOLATED at step 2" printed once, no traceback.
  (the reward model's kill and resume: test_faults_rm.py, a file of its own so the two
  CI workers share the slow runs)

    python -m pytest tests/loop/test_faults.py -q
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray")
pytest.importorskip("psutil")

import psutil

from rlhf_exact.config.compose import repo_root
from rlhf_exact.runtime.cluster import TEMP_PREFIX

from .runs import assert_same_run, final_weights, metrics

pytestmark = pytest.mark.slow

STEPS = 8


def as_in_a_terminal():
    """The child's SIGINT at its default, as a terminal starts a command: a shell's
    background job (`cmd &`, CI runners, nohup scripts) inherits SIGINT ignored, and a
    run started from it would not see the test's Ctrl-C at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(tmp_path, name, *args, steps=STEPS, stdout=False):
    """stdout: the run's stdout into NAME.err too (the whole console), else dropped."""
    log = open(tmp_path / f"{name}.err", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_exact.train", f"run.output_dir={tmp_path}", f"run.name={name}",
         f"run.steps={steps}", "run.save_every=1", "run.keep_last=20", "logging.wandb_mode=disabled",
         "logging.progress_bars=false", *args],
        cwd=repo_root(), stdout=log if stdout else subprocess.DEVNULL, stderr=log, start_new_session=True,
        preexec_fn=as_in_a_terminal)


def wait_for_step(run_dir, proc, step, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        f = run_dir / "metrics.jsonl"
        if f.exists() and f.read_text().count("\n") >= step:
            return
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before step {step}"
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def ray_of(proc):
    """The driver's Ray: its descendant processes now, and its temp dir."""
    procs = psutil.Process(proc.pid).children(recursive=True)
    dirs = {m.group(0) for p in procs for m in [re.search(rf"/tmp/{TEMP_PREFIX}\w+", " ".join(_cmd(p)))] if m}
    assert len(dirs) == 1, dirs
    return procs, dirs.pop()


def _cmd(p):
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def assert_nothing_left(procs, temp_dir, timeout=30):
    t = time.time()
    while time.time() - t < timeout:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive and not os.path.exists(temp_dir):
            print(f"all {len(procs)} Ray processes gone and {temp_dir} deleted {time.time() - t:.1f} s after the end")
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind after {timeout} s: {[(p.pid, p.name()) for p in alive]}, "
                         f"temp dir exists: {os.path.exists(temp_dir)}")


def finish(proc, timeout=900):
    rc = proc.wait(timeout)
    return rc


def assert_same_as_whole(a_dir, b_dir):
    a, b = metrics(a_dir), metrics(b_dir)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, STEPS + 1))
    assert all(m["parity/kl"] == 0.0 for m in a + b)
    assert_same_run(a, final_weights(a_dir), b_dir)


def test_ctrl_c_resume_and_a_corrupt_checkpoint(tmp_path):
    whole = launch(tmp_path, "whole")
    wait_for_step(tmp_path / "whole", whole, 1)
    procs, temp_dir = ray_of(whole)
    assert finish(whole) == 0, (tmp_path / "whole.err").read_text()[-3000:]
    assert_nothing_left(procs, temp_dir)

    run = launch(tmp_path, "cut")
    wait_for_step(tmp_path / "cut", run, 3)
    procs, temp_dir = ray_of(run)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert finish(run, timeout=120) == 130
    err = (tmp_path / "cut.err").read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"interrupted after step (\d+); resume with run.resume=auto run.name=cut "
                     rf"run.output_dir={tmp_path} \(it continues from checkpoint step_(\d+)\)", last)
    assert m, last
    done, ckpt = int(m.group(1)), int(m.group(2))
    assert 3 <= done < STEPS and done - 1 <= ckpt <= done
    assert [r["step"] for r in metrics(tmp_path / "cut")] == list(range(1, done + 1))
    assert_nothing_left(procs, temp_dir)

    # the newest checkpoint changed on disk, same size: resume=auto falls back to the one before
    newest = tmp_path / "cut" / "checkpoints" / f"step_{ckpt:06d}" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-8] ^= 0x01
    newest.write_bytes(bytes(data))
    run = launch(tmp_path, "cut", "run.resume=auto")
    assert finish(run) == 0, (tmp_path / "cut.err").read_text()[-3000:]
    err = (tmp_path / "cut.err").read_text()
    assert (f"note: checkpoint step_{ckpt:06d} does not verify (corrupt checkpoint file {newest}: its SHA-256 "
            f"differs") in err, err[-3000:]
    assert f"note: resuming from step_{ckpt - 1:06d}, the newest intact checkpoint" in err
    assert "Traceback" not in err
    assert_same_as_whole(tmp_path / "whole", tmp_path / "cut")


def violated_steps(err):
    """(steps named by EXACT MODE VIOLATED messages, steps whose console line says VIOLATED)."""
    said = [int(m) for m in re.findall(r"EXACT MODE VIOLATED at step (\d+)", err)]
    lines = [int(m) for m in re.findall(r"step (\d+)/\d+: .*parity VIOLATED", err)]
    return said, lines


def test_parity_violation_names_its_step(tmp_path):
    fault = ("run.imports=[tests.loop.corrupt_sync]", "eval.every_steps=0", "run.save_every=0")
    warn = launch(tmp_path, "warn", *fault, "run.on_parity_mismatch=warn", steps=3, stdout=True)
    assert finish(warn) == 0, (tmp_path / "warn.err").read_text()[-3000:]
    err = (tmp_path / "warn.err").read_text()
    # run.console=quiet: the run's lines and warnings on the console, the rest in console.log
    full = (tmp_path / "warn" / "console.log").read_text()
    print(f"console {len(err.splitlines())} lines, console.log {len(full.splitlines())} lines")
    assert len(err.splitlines()) <= 60 and f"full log: {tmp_path / 'warn' / 'console.log'}" in err, err
    # the summary, then the metrics line; Ray forwards the actors' last warnings (vLLM's
    # shutdown) asynchronously, so they may still follow
    own = [line for line in err.splitlines() if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=\d+\)", line)]
    assert own[-2].startswith("reward/mean: first") and own[-1].startswith("metrics: "), err
    assert "(SamplerActor pid=" in full and " INFO " in full, full[-3000:]  # vLLM's INFO, not on the console
    assert not [line for line in err.splitlines() if "pid=" in line and " INFO " in line], err
    said, lines = violated_steps(err)
    assert lines == [2] and said and set(said) == {2}, err[-3000:]  # the logprobs, then the ratio
    rows = metrics(tmp_path / "warn")
    assert [r["parity/tokens_bitwise_equal_frac"] == 1.0 for r in rows] == [True, False, True], rows

    stop = launch(tmp_path, "stop", *fault, steps=3)
    assert finish(stop) == 3, (tmp_path / "stop.err").read_text()[-3000:]
    err = (tmp_path / "stop.err").read_text()
    said, lines = violated_steps(err)
    assert said == [2] and lines == [], err[-3000:]  # once: no traceback, no second report
    assert err.count("EXACT MODE VIOLATED") == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: EXACT MODE VIOLATED at step 2: sampler and trainer "
                                                     "logprobs differ"), err[-3000:]
    assert re.findall(r"step (\d+)/3: ", err) == ["1"], err[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "stop")] == [1]


def test_sigterm_is_ctrl_c_and_the_hint_resumes_the_same_run(tmp_path):
    run = launch(tmp_path, "T", "recipe=grpo_qwen3_tiny_tools", "eval.every_steps=0", steps=4)
    wait_for_step(tmp_path / "T", run, 2)
    procs, temp_dir = ray_of(run)
    os.killpg(run.pid, signal.SIGTERM)  # what `timeout` and a scheduler do
    assert finish(run, timeout=60) == 130, (tmp_path / "T.err").read_text()[-3000:]
    err = (tmp_path / "T.err").read_text()
    assert "Traceback" not in err and "SIGTERM" not in err and "GCS" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"interrupted after step ([23]); resume with (run.resume=auto run.name=T "
                     rf"run.output_dir={tmp_path}) \(it continues from checkpoint step_00000([123])\)", last)
    assert m, last
    assert_nothing_left(procs, temp_dir)

    # the hint alone: the run's own config (recipe, run.steps, logging), from its checkpoint to step 4
    log = open(tmp_path / "hint.err", "w")
    hint = subprocess.Popen([sys.executable, "-m", "rlhf_exact.train", *m.group(2).split()], cwd=repo_root(),
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    assert finish(hint) == 0, (tmp_path / "hint.err").read_text()[-3000:]
    err = (tmp_path / "hint.err").read_text()
    assert f"note: resuming run T with its config {tmp_path / 'T' / 'config.yaml'}\n" in err, err[-3000:]
    assert re.findall(r"step (\d)/4: ", err) == [str(s) for s in range(int(m.group(3)) + 1, 5)], err[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "T")] == [1, 2, 3, 4]
    assert (tmp_path / "T" / "final_model" / "config.json").is_file()
