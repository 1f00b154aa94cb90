"""`python -m rlhf_exact.train`: fast --help without torch, --print-config, one-line
config errors with exit status 2, run directory + config.yaml before the loop starts."""
import importlib.machinery
import os
import subprocess
import sys
import time
import types

import pytest
import yaml

from rlhf_exact import train
from rlhf_exact.config.compose import repo_root

HEAVY = ("torch", "ray", "vllm", "wandb", "hydra", "omegaconf", "matplotlib")


def _run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=kw.get("cwd", repo_root()),
                          env={**os.environ, **kw.get("env", {})})


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_fast_and_imports_nothing_heavy(flag):
    code = (f"import sys, time, runpy; t = time.perf_counter(); sys.argv = ['rlhf_exact.train', {flag!r}]\n"
            "try:\n    runpy.run_module('rlhf_exact.train', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('SECONDS', time.perf_counter() - t)\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    start = time.perf_counter()
    p = _run("-c", code)
    wall = time.perf_counter() - start
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout
    assert "grpo_qwen3_tiny" in p.stdout and "grpo_qwen3 " in p.stdout  # recipes listed
    for section in ("algorithm", "sampler", "trainer", "cluster", "logging"):
        assert f"\n  {section} " in p.stdout
    seconds = float(p.stdout.split("SECONDS ")[1].split()[0])
    print(f"--help: {seconds * 1000:.0f} ms in-process, {wall:.2f} s with interpreter start")
    assert seconds < 1.0


def test_help_section():
    out = train.help_text("algorithm")
    assert "algorithm.lr: float = 1e-06" in out and "AdamW learning rate" in out
    with pytest.raises(KeyError, match="no config section"):
        train.help_text("algo")
    assert "logging.wandb_mode" in train.help_text("all")


def test_print_config_subprocess():
    p = _run("-m", "rlhf_exact.train", "recipe=grpo_qwen3_tiny", "algorithm.lr=1e-4", "--print-config")
    assert p.returncode == 0, p.stderr
    cfg = yaml.safe_load(p.stdout)
    assert cfg["algorithm"]["lr"] == 1e-4 and cfg["recipe"] == "grpo_qwen3_tiny"


def test_print_config_forms_and_no_run_dir(tmp_path, capsys):
    for flag in ("--print-config", "print_config=true"):
        assert train.main(["recipe=grpo_qwen3", flag, f"run.output_dir={tmp_path}"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["model"]["path"] is None  # no file checks when printing
    assert list(tmp_path.iterdir()) == []


def test_config_error_is_one_line_exit_2():
    p = _run("-m", "rlhf_exact.train", "algorithm.lrr=1")
    assert p.returncode == 2
    assert p.stderr.strip() == "error: unknown config key 'algorithm.lrr' (did you mean 'algorithm.lr'?)"
    p = _run("-m", "rlhf_exact.train", "recipe=grpo_qwen3")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_bad_flag(capsys):
    assert train.main(["--print-confg"]) == 2
    assert "unknown flag '--print-confg'" in capsys.readouterr().err


def test_main_makes_run_dir_and_calls_loop(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("rlhf_exact.loop")
    fake.run = lambda cfg, run_dir, verified: calls.append((cfg, run_dir, verified)) or {}
    fake.ParityError = fake.NonFiniteLossError = type("Never", (Exception,), {})
    fake.__spec__ = importlib.machinery.ModuleSpec("rlhf_exact.loop", None)
    monkeypatch.setitem(sys.modules, "rlhf_exact.loop", fake)
    import rlhf_exact

    monkeypatch.setattr(rlhf_exact, "loop", fake, raising=False)  # `from rlhf_exact import loop` reads this first
    assert train.main([f"run.output_dir={tmp_path}", "run.name=demo"]) == 0
    (cfg, run_dir, verified), = calls
    assert run_dir == tmp_path / "demo" and cfg.run.name == "demo" and verified is None  # nothing to resume
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run"]["name"] == "demo" and saved["recipe"] == "grpo_qwen3_tiny"
    # the same name again without resume: refused, one line
    assert train.main([f"run.output_dir={tmp_path}", "run.name=demo"]) == 2
    assert train.main([f"run.output_dir={tmp_path}", "run.name=demo", "run.resume=auto"]) == 0
    # a checkpoint to resume: preflight verified it, the loop is told which (it hashes it no more)
    import torch

    from rlhf_exact.runtime.checkpoint import save_run_checkpoint

    save_run_checkpoint(run_dir, 1, {"model": {"w": torch.zeros(4)}}, {"data": {}})
    assert train.main([f"run.output_dir={tmp_path}", "run.name=demo", "run.resume=auto"]) == 0
    assert calls[-1][2] == run_dir / "checkpoints" / "step_000001"


def test_summary_line_shows_a_small_kl():
    """The last line of a run: a KL of 2e-5 is not printed as 0.0000; an exact KL is 0."""
    from rlhf_exact.runtime.console import summarize

    result = {"first": {"reward/mean": 0.25, "parity/kl": 2e-5}, "last": {"reward/mean": 0.5, "parity/kl": 0.0}}
    assert summarize(result) == ("reward/mean: first 0.2500 last 0.5000  parity/kl: first 2.000e-05 last 0")
