"""Resume means the same run, checked before anything starts (no run needed): a resumed
run composes its own saved config.yaml, the command line's changes are listed and
refused where they change what the run learns, and a name without a run is one line
naming the nearest runs. The hint of an interrupted run is run through the CLI in
tests/loop/test_faults.py."""
import pytest

from rlhf_exact import train
from rlhf_exact.config import ConfigError, load_config, save_config
from rlhf_exact.runtime.rundir import prepare_run_dir
from rlhf_exact.runtime.resume import load_run_config


@pytest.fixture
def saved(tmp_path):
    """A run 'tools-a' of recipe grpo_qwen3_tiny_tools, 4 steps, as its start saved it."""
    cfg = load_config([f"run.output_dir={tmp_path}", "recipe=grpo_qwen3_tiny_tools", "run.name=tools-a",
                       "run.steps=4", "algorithm.lr=0.01"])
    save_config(cfg, prepare_run_dir(cfg) / "config.yaml")
    return tmp_path


def test_resume_composes_the_runs_own_config(saved):
    cfg, notes = load_run_config([f"run.output_dir={saved}", "run.name=tools-a", "run.resume=auto"])
    assert (cfg.recipe, cfg.run.steps, cfg.algorithm.lr, cfg.env.name) == ("grpo_qwen3_tiny_tools", 4, 0.01,
                                                                          "synthetic_calculator")
    assert notes == [f"resuming run tools-a with its config {saved / 'tools-a' / 'config.yaml'}"]
    # run.steps may grow; how it runs may change: listed
    cfg, notes = load_run_config([f"run.output_dir={saved}", "run.name=tools-a", "run.resume=auto", "run.steps=6",
                                  "logging.progress_bars=false"])
    assert cfg.run.steps == 6 and cfg.algorithm.lr == 0.01
    assert notes[0].endswith("; the command line changes logging.progress_bars True -> False; run.steps 4 -> 6")


@pytest.mark.parametrize("args, refused", [
    (["recipe=grpo_qwen3_tiny"], "recipe grpo_qwen3_tiny_tools -> grpo_qwen3_tiny"),
    (["algorithm.lr=0.001", "model.tiny.num_hidden_layers=3"],
     "algorithm.lr 0.01 -> 0.001; model.tiny.num_hidden_layers 4 -> 3"),
    (["algorithm=dapo"], "algorithm=dapo (swaps a block)"),
    (["data.synthetic.prompt_len=9", "run.seed=1"], "data.synthetic.prompt_len 8 -> 9; run.seed 0 -> 1"),
])
def test_resume_refuses_another_run(saved, capsys, args, refused):
    assert train.main([f"run.output_dir={saved}", "run.name=tools-a", "run.resume=auto", *args]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: run.resume=auto: the command line changes what run tools-a learns: {refused} (a resumed "
                   f"run keeps its recipe, model, algorithm, data and run.seed; run.name=NEW_NAME starts another "
                   f"run)\n")


def test_resume_of_a_name_without_a_run(saved, capsys):
    (saved / "tools-b").mkdir()  # a directory, but no run in it
    assert train.main([f"run.output_dir={saved}", "run.name=tools_a", "run.resume=auto"]) == 2
    assert capsys.readouterr().err == (f"error: run.resume=auto: no run named 'tools_a' in {saved} (nearest: "
                                       f"tools-a); run.resume=auto_or_new starts a new run of that name\n")
    assert sorted(p.name for p in saved.iterdir()) == ["tools-a", "tools-b"]  # nothing made
    with pytest.raises(ConfigError, match=r"no run named 'zzz' in .* \(newest: tools-a\)"):
        load_run_config([f"run.output_dir={saved}", "run.name=zzz", "run.resume=auto"])
    # asked for: a new run of that name, composed from the command line's recipe
    cfg, notes = load_run_config([f"run.output_dir={saved}", "run.name=tools_a", "run.resume=auto_or_new"])
    assert cfg.recipe == "grpo_qwen3_tiny" and notes == []
