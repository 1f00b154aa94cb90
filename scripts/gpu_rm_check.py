"""The learned-reward-model loop on one GPU, through the entry points a user runs: train the
tiny reward model, then GRPO against it with the scorer actor colocated on the trainer's
GPU. Each check is PASS or FAIL in the table printed last (exit status 1 on any FAIL);
the figures go to OUT_DIR/gpu_rm.json.

    python scripts/gpu_rm_check.py OUT_DIR
    python scripts/gpu_rm_check.py OUT_DIR --rm-steps 60 --steps 30 -- sampler.gpu_memory_utilization=0.2

Runs (in OUT_DIR, W&B off):
  rm     python -m rlhf_exact.train_rm recipe=rm_qwen3_tiny cluster=cuda trainer.world_size=1
  grpo   python -m rlhf_exact.train recipe=grpo_qwen3_tiny_rm cluster=cuda trainer.world_size=1
         reward.model.path=OUT_DIR/rm/final_model reward.model.num_scorers=1
Checks: held-out accuracy of the reward model from about 0.5 to >= 0.9; every GRPO step exact
(parity/kl == 0, every token bitwise equal); the reward model's score and the rule reward
it was trained from (weight 0) both higher at the end than at the start; the scorer ran on
CUDA (the run's console log names its device). --device cpu runs the same on the CPU recipes.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = ("logging.wandb_mode=disabled", "logging.progress_bars=false")
DEVICE = {"cuda": ("cluster=cuda", "trainer.world_size=1"), "cpu": ()}  # cpu: the recipes as they are


def run(out: pathlib.Path, name: str, module: str, args: list[str], timeout: float, device: str) -> tuple[int, float]:
    cmd = [sys.executable, "-m", module, *args, *DEVICE[device], *COMMON, f"run.output_dir={out}", f"run.name={name}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    return rc, time.perf_counter() - t0


def metrics(run_dir: pathlib.Path) -> list[dict]:
    from rlhf_exact.runtime.metrics import read_metrics

    return read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--rm-steps", type=int, default=60)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds for each run")
    ap.add_argument("--device", choices=sorted(DEVICE), default="cuda", help="cpu: the same check on the CPU "
                    "recipes (a smoke test of this script)")
    ap.add_argument("overrides", nargs="*", help="key=value for the GRPO run (after --)")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checks, figures = [], {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    rc, secs = run(out, "rm", "rlhf_exact.train_rm", ["recipe=rm_qwen3_tiny", f"run.steps={args.rm_steps}"],
                   args.timeout, args.device)
    figures["rm_seconds"] = secs
    check("rm: exit 0", rc == 0, f"exit {rc}, {secs:.0f} s (log {out / 'rm.log'})")
    rm = metrics(out / "rm")
    first = next((m["heldout/initial/accuracy"] for m in rm if "heldout/initial/accuracy" in m), None)
    last = next((m["heldout/accuracy"] for m in reversed(rm) if "heldout/accuracy" in m), None)
    figures["rm_heldout_accuracy"] = [first, last]
    check("rm: held-out accuracy >= 0.9", last is not None and last >= 0.9, f"{first} -> {last}")
    if rc == 0:
        rc, secs = run(out, "grpo", "rlhf_exact.train",
                       ["recipe=grpo_qwen3_tiny_rm", f"run.steps={args.steps}", f"reward.model.path={out / 'rm'}"
                        "/final_model", "reward.model.num_scorers=1", *args.overrides], args.timeout, args.device)
        figures["grpo_seconds"] = secs
        check("grpo: exit 0", rc == 0, f"exit {rc}, {secs:.0f} s (log {out / 'grpo.log'})")
        rows = metrics(out / "grpo")
        figures["grpo"] = [{k: m.get(k) for k in ("step", "parity/kl", "parity/tokens_bitwise_equal_frac",
                                                    "reward/model_mean", "reward/synthetic_mean",
                                                    "eval/first_reward_mean")} for m in rows]
        check("grpo: steps 1..N", [m["step"] for m in rows] == list(range(1, args.steps + 1)), f"{len(rows)} rows")
        exact = all(m.get("parity/kl") == 0 and m.get("parity/tokens_bitwise_equal_frac") == 1 for m in rows)
        check("grpo: every step exact", bool(rows) and exact, "KL 0" if exact else "a step differs")
        score = [m["reward/model_mean"] for m in rows if "reward/model_mean" in m]
        check("grpo: reward model score rises", len(score) > 1 and score[-1] > score[0],
              f"{score[0]:.3f} -> {score[-1]:.3f}" if score else "no reward/model_mean")
        rule = [m["eval/first_reward_mean"] for m in rows if "eval/first_reward_mean" in m]
        check("grpo: held-out rule reward rises", len(rule) > 1 and rule[-1] > rule[0],
              f"{rule[0]:.3f} -> {rule[-1]:.3f}" if rule else "no eval/first_reward_mean")
        console = out / "grpo" / "console.log"
        said = re.findall(r"reward model scorer\(s\) ready on (\S+)", console.read_text() if console.is_file() else "")
        check(f"grpo: scorer on {args.device}", bool(said) and all(d.startswith(args.device) for d in said),
              f"ready on {said}" if said else "no 'reward model scorer(s) ready' line in grpo/console.log")
    (out / "gpu_rm.json").write_text(json.dumps({"checks": checks, "figures": figures,
                                                 "env": {"python": sys.version.split()[0],
                                                         "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}},
                                                indent=1))
    ok = all(c["ok"] for c in checks)
    print(f"\ngpu reward-model loop: {'PASS' if ok else 'FAIL'}")
    for c in checks:
        print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']:<40} {c['detail']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
