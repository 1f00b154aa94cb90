"""What the loop tests share: a run started in-process (`start`), run with faults
injected at given steps (`run_and_kill`), and what they read back from a finished run
directory and the claims they make about it: its metrics rows, its exported weights,
every step exact, and two runs equal (metrics and final weights). One copy for every
test module under tests/loop."""
import json
import threading
import time

import torch

TIMING = ("time/", "perf/", "sync/")  # wall-clock metrics differ run to run


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir):
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run_dir / "final_model").glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_exact(rows):
    """Every step: KL exactly 0, every token's logprob bitwise equal, ratio exactly 1."""
    assert rows, "no metrics"
    for m in rows:
        assert m["parity/kl"] == 0.0, m
        assert m["parity/logprob_abs_diff_max"] == 0.0 and m["parity/logprob_abs_diff_mean"] == 0.0, m
        assert m["parity/tokens_bitwise_equal_frac"] == 1.0, m
        assert m["parity/ratio_min"] == 1.0 and m["parity/ratio_max"] == 1.0, m


def assert_same_run(rows, weights, run_dir, skip=()):
    """run_dir's run equals the reference: every metric but timings and `skip` equal to
    `rows`, step by step, and the final weights bitwise equal to `weights`."""
    for a, b in zip(rows, metrics(run_dir)):
        for k in a:
            if not k.startswith(TIMING) and k not in ("elapsed", "wall_time", "time", *skip):
                assert a[k] == b[k], (run_dir.name, a["step"], k, a[k], b[k])
    mine = final_weights(run_dir)
    assert mine.keys() == weights.keys(), run_dir.name
    for k in weights:
        assert torch.equal(weights[k], mine[k]), (run_dir.name, k)


def start(tmp_path, name, *overrides):
    """A Loop of the tiny recipe (W&B off, no progress bars) in tmp_path/name, not yet run."""
    from rlhf_exact import loop
    from rlhf_exact.config import load_config, save_config
    from rlhf_exact.runtime.rundir import prepare_run_dir

    cfg = load_config(["recipe=grpo_qwen3_tiny", f"run.output_dir={tmp_path}", f"run.name={name}",
                       "logging.wandb_mode=disabled", "logging.progress_bars=false", *overrides])
    run_dir = prepare_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    return loop.Loop(cfg, run_dir), run_dir


def run_and_kill(run, run_dir, kills, timeout=900):
    """Run `run` while a thread calls kills[rows]() once metrics.jsonl holds `rows` steps,
    for each entry in order. Returns {rows: what the kill returned} for those that fired."""
    fired, over = {}, threading.Event()

    def watch():
        deadline = time.time() + timeout
        pending = sorted(kills)
        while pending and time.time() < deadline and not over.is_set():
            f = run_dir / "metrics.jsonl"
            if f.exists() and f.read_text().count("\n") >= pending[0]:
                rows = pending.pop(0)
                fired[rows] = kills[rows]()
                continue
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        run.run()
    finally:
        over.set()
        t.join()
    return fired
