"""What a run spends before and around its steps, by `sampler.engine_process`: the
README's tiny recipe (`python -m rlhf_exact.train recipe=grpo_qwen3_tiny`) run whole,
rounds interleaved (inline, separate, inline, ...), each in a fresh process as a user
runs it. Per run: wall seconds, the machine's CPU seconds over the run (every process,
from /proc/stat: Linux; so keep the machine otherwise idle), the engine's start ("1
sampler engine(s) ... ready (X s)") and the summed step time (metrics.jsonl).

    python benchmarks/bench_startup.py OUT_DIR [--rounds 3] [--steps 30] [--json OUT.json]

Prints one Markdown table (medians, and separate / inline), the last thing it prints.
Also checks that the two modes' runs have the same metrics (timings aside): the mode
changes where the engine runs, not what it computes.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

MODES = ("inline", "separate")
TIMING = ("time/", "perf/", "sync/")


def cpu_seconds() -> float:
    """user + nice + system seconds of every CPU since boot (/proc/stat)."""
    fields = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]
    return sum(int(f) for f in fields) / os.sysconf("SC_CLK_TCK")


def one_run(out: pathlib.Path, name: str, mode: str, steps: int) -> dict:
    cmd = [sys.executable, "-m", "rlhf_exact.train", "recipe=grpo_qwen3_tiny", f"run.output_dir={out}",
           f"run.name={name}", f"run.steps={steps}", f"sampler.engine_process={mode}", "logging.wandb_mode=disabled",
           "logging.progress_bars=false"]
    c0, t0 = cpu_seconds(), time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if p.returncode != 0:
        raise SystemExit(f"{name}: exit {p.returncode}\n{p.stderr[-3000:]}")
    ready = re.search(r"sampler engine\(s\) \(vLLM, kernels=exact\) ready \(([\d.]+) s\)", p.stderr)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu, "engine_start_s": float(ready.group(1)) if ready else None,
            "steps_s": sum(r["time/step"] for r in rows), "rows": rows}


def same_metrics(a: list[dict], b: list[dict]) -> list[str]:
    """Keys (step:key) whose values differ, timings aside."""
    return [f"{x['step']}:{k}" for x, y in zip(a, b) for k in x
            if not k.startswith(TIMING) and k not in ("elapsed", "wall_time", "time") and x[k] != y.get(k)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=pathlib.Path, help="folder for the runs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", type=pathlib.Path, help="write the per-run figures here")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        for mode in MODES:
            runs.append(one_run(args.out, f"{mode}-{r}", mode, args.steps))
            x = runs[-1]
            print(f"round {r} {mode}: wall {x['wall_s']:.1f} s, cpu {x['cpu_s']:.1f} s, "
                  f"engine {x['engine_start_s']} s, steps {x['steps_s']:.1f} s", flush=True)
    ref = runs[0]["rows"]
    differ = {f"{x['mode']}-{i // len(MODES)}": d for i, x in enumerate(runs) if (d := same_metrics(ref, x["rows"]))}
    med = {m: {k: statistics.median(x[k] for x in runs if x["mode"] == m)
               for k in ("wall_s", "cpu_s", "engine_start_s", "steps_s")} for m in MODES}
    if args.json:
        args.json.write_text(json.dumps({
            "command": f"python benchmarks/bench_startup.py OUT --rounds {args.rounds} --steps {args.steps}",
            "cpus": os.cpu_count(), "runs": [{k: v for k, v in x.items() if k != "rows"} for x in runs],
            "median": med, "metrics_equal_across_modes": not differ}, indent=1) + "\n")
    if differ:
        print(f"metrics differ from {MODES[0]}-0: {differ}")
    print(f"\n{args.rounds} rounds of recipe=grpo_qwen3_tiny run.steps={args.steps}, {os.cpu_count()} CPUs, medians; "
          f"metrics equal across modes: {'yes' if not differ else 'NO'}\n")
    print("| sampler.engine_process | wall s | machine CPU s | engine start s | steps s |")
    print("| --- | --- | --- | --- | --- |")
    for m in MODES:
        print(f"| {m} | " + " | ".join(f"{med[m][k]:.1f}" for k in ("wall_s", "cpu_s", "engine_start_s", "steps_s"))
              + " |")
    print("| separate / inline | " + " | ".join(f"{med['separate'][k] / med['inline'][k]:.2f}x"
                                               for k in ("wall_s", "cpu_s", "engine_start_s", "steps_s")) + " |")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
