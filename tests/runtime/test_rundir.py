"""Run directory naming, reuse rules and the checkpoint to resume from."""
import pytest
import torch

from rlhf_exact.config import ConfigError, load_config
from rlhf_exact.runtime.checkpoint import save_run_checkpoint
from rlhf_exact.runtime.rundir import prepare_run_dir, resume_checkpoint


def _cfg(tmp_path, *args):
    return load_config([f"run.output_dir={tmp_path}", *args])


def test_default_name_is_recipe_timestamp(tmp_path):
    cfg = _cfg(tmp_path)
    d1 = prepare_run_dir(cfg, now=0)
    assert d1.name.startswith("grpo_qwen3_tiny-") and cfg.run.name == d1.name
    (d1 / "config.yaml").write_text("x")
    d2 = prepare_run_dir(_cfg(tmp_path), now=0)  # same second: a suffix, never the same dir
    assert d2 != d1 and d2.name == d1.name + "-2"
    later = prepare_run_dir(_cfg(tmp_path), now=10**9)
    assert resume_checkpoint(_cfg(tmp_path), later) is None
    # resume=auto picks the newest <recipe>-<timestamp>
    assert prepare_run_dir(_cfg(tmp_path, "run.resume=auto")) == later


def test_named_run_and_resume(tmp_path):
    run = prepare_run_dir(_cfg(tmp_path, "run.name=exp"))
    assert run == tmp_path / "exp"
    assert resume_checkpoint(_cfg(tmp_path, "run.name=exp", "run.resume=auto"), run) is None
    save_run_checkpoint(run, 4, {"model": {"w": torch.ones(1)}}, {})
    save_run_checkpoint(run, 8, {"model": {"w": torch.ones(1)}}, {})
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(_cfg(tmp_path, "run.name=exp"))
    cfg = _cfg(tmp_path, "run.name=exp", "run.resume=auto")
    assert prepare_run_dir(cfg) == run and resume_checkpoint(cfg, run).name == "step_000008"
    # resume from an explicit checkpoint or run directory
    cfg = _cfg(tmp_path, f"run.resume={run / 'checkpoints' / 'step_000004'}")
    assert prepare_run_dir(cfg) == run and cfg.run.name == "exp"
    assert resume_checkpoint(cfg, run).name == "step_000004"
    cfg = _cfg(tmp_path, f"run.resume={run}")
    assert resume_checkpoint(cfg, prepare_run_dir(cfg)).name == "step_000008"


def test_bad_resume_paths(tmp_path):
    with pytest.raises(ConfigError, match="run.resume"):
        _cfg(tmp_path, f"run.resume={tmp_path / 'nothing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        prepare_run_dir(_cfg(tmp_path, f"run.resume={tmp_path / 'empty'}"))
