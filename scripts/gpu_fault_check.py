"""Faults on a GPU, through the entry point a user runs: the run recovers, stays exact,
and ends where an uninterrupted run ends, bit for bit.

    python scripts/gpu_fault_check.py OUT_DIR                              # grpo_qwen3_gpu, 6 steps, all checks
    python scripts/gpu_fault_check.py OUT_DIR --only kills                 # the reference and the kill run
    python scripts/gpu_fault_check.py OUT_DIR --only resume                # then the Ctrl-C + resume runs
    python scripts/gpu_fault_check.py OUT_DIR --recipe grpo_qwen3_gpu_4b -- sampler.gpu_memory_utilization=0.3

Runs of `python -m rlhf_exact.train recipe=RECIPE run.steps=STEPS run.save_every=SAVE_EVERY`
(W&B and eval off) in OUT_DIR, one after another (each starts its own Ray and engines):

  whole   uninterrupted: the reference (kept in OUT_DIR/whole and reused when complete);
  kills   the sampler actor's process SIGKILLed once step 2 is logged, a trainer rank's
          process once step 4 is logged: Ray restarts the actor (the group re-sends the
          weights and samples its share again), the trainer group restarts from the
          step-4 checkpoint;
  cut     SIGINT to the run's process group (Ctrl-C) once step 3 is logged: exit 130,
          then `run.resume=auto run.name=cut` continues it.

Checks, each PASS or FAIL in the table (exit status 1 on any FAIL): every step of every
run exact (parity/kl == 0, every token's logprob bitwise equal, ratio 1); the restarts
counted; every metric but timings and restart counts equal to the reference's, step by
step; the final weights (safetensors read back) torch.equal to the reference's. The
table is printed last and written with the figures to OUT_DIR/gpu_faults.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = ("time", "perf/", "sync/", "sampler/restarts", "trainer/restarts", "elapsed", "wall_time")  # prefixes
ACTORS = {"sampler": "ray::SamplerActor", "trainer": "ray::TrainerWorker"}


def launch(out: pathlib.Path, name: str, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlhf_exact.train", f"recipe={args.recipe}", f"run.output_dir={out}",
           f"run.name={name}", f"run.steps={args.steps}", f"run.save_every={args.save_every}",
           f"run.keep_last={args.steps + 1}", "logging.wandb_mode=disabled", "logging.progress_bars=false",
           "eval.every_steps=0", *args.overrides]
    print("$", " ".join(cmd), flush=True)
    log = open(out / f"{name}.log", "a")
    # SIGINT at its default, as from a terminal: a background job inherits it ignored
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def rows(run_dir: pathlib.Path) -> list[dict]:
    f = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def wait_rows(proc, run_dir: pathlib.Path, n: int, timeout: float) -> None:
    end = time.time() + timeout
    while len(rows(run_dir)) < n:
        if proc.poll() is not None:
            raise RuntimeError(f"{run_dir.name}: the run ended (status {proc.returncode}) before step {n}")
        if time.time() > end:
            raise RuntimeError(f"{run_dir.name}: no step {n} within {timeout:.0f} s")
        time.sleep(0.05)


def kill_actor(proc, role: str) -> int:
    """SIGKILL the first process of `role` (ACTORS) under the run's driver; its pid."""
    import psutil

    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(ACTORS[role]):
                os.kill(p.pid, signal.SIGKILL)
                return p.pid
        except psutil.Error:
            continue
    raise RuntimeError(f"no {ACTORS[role]} process under the driver {proc.pid}")


def final_weights(run_dir: pathlib.Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run_dir / "final_model").glob("*.safetensors")):
        out.update(load_file(f))
    return out


def compare(ref_dir: pathlib.Path, run_dir: pathlib.Path, steps: int) -> list[tuple[str, bool, str]]:
    """The checks of run_dir against the reference: (check, passed, detail)."""
    import torch

    a, b = rows(ref_dir), rows(run_dir)
    exact = [m["step"] for m in b if not (m["parity/kl"] == 0.0 and m["parity/tokens_bitwise_equal_frac"] == 1.0
                                          and m["parity/ratio_min"] == 1.0 == m["parity/ratio_max"])]
    diff = [(x["step"], k) for x, y in zip(a, b) for k in x if not k.startswith(SKIP) and x.get(k) != y.get(k)]
    wa, wb = final_weights(ref_dir), final_weights(run_dir)
    unequal = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    same = bool(wa) and not unequal and wa.keys() == wb.keys()
    return [(f"{run_dir.name}: steps 1..{steps}", [m["step"] for m in b] == list(range(1, steps + 1)),
             f"{len(b)} rows"),
            (f"{run_dir.name}: every step exact", not exact, f"not exact at steps {exact}" if exact else "KL 0"),
            (f"{run_dir.name}: metrics equal the reference's", not diff, f"first differences {diff[:3]}"),
            (f"{run_dir.name}: final weights equal the reference's", same,
             f"{len(wa) - len(unequal)} of {len(wa)} tensors equal")]


def run_whole(out, args) -> list:
    d = out / "whole"
    if len(rows(d)) == args.steps and (d / "final_model").is_dir():
        return [("whole: reused", True, str(d))]
    rc = launch(out, "whole", args).wait(args.timeout)
    return [("whole: exit 0", rc == 0, f"exit {rc}")]


def run_kills(out, args) -> list:
    d, proc = out / "kills", launch(out, "kills", args)
    pids = {}
    for step, role in ((2, "sampler"), (4, "trainer")):
        wait_rows(proc, d, step, args.timeout)
        pids[role] = kill_actor(proc, role)
    rc = proc.wait(args.timeout)
    last = (rows(d) or [{}])[-1]
    return [("kills: exit 0", rc == 0, f"exit {rc}; killed {pids}"),
            ("kills: restarts counted", last.get("sampler/restarts", 0) >= 1 and last.get("trainer/restarts", 0) >= 1,
             f"sampler {last.get('sampler/restarts')}, trainer {last.get('trainer/restarts')}"),
            *compare(out / "whole", d, args.steps)]


def run_cut(out, args) -> list:
    d, proc = out / "cut", launch(out, "cut", args)
    wait_rows(proc, d, 3, args.timeout)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(args.timeout)
    args.overrides = [*args.overrides, "run.resume=auto"]
    rc2 = launch(out, "cut", args).wait(args.timeout)
    return [("cut: Ctrl-C exits 130", rc == 130, f"exit {rc}"), ("cut: resume exits 0", rc2 == 0, f"exit {rc2}"),
            *compare(out / "whole", d, args.steps)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--recipe", default="grpo_qwen3_gpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-every", type=int, default=1, help="run.save_every of every run (a 0.6B step "
                    "checkpoint took about 30 s on the H200: 2 halves that; a trainer kill then restarts "
                    "from an older checkpoint and runs more steps again)")
    ap.add_argument("--only", choices=("kills", "resume"))
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for each run and each wait")
    ap.add_argument("overrides", nargs="*", help="key=value for every run (after --)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0, checks = time.perf_counter(), run_whole(args.out, args)
    try:
        if args.only in (None, "kills"):
            checks += run_kills(args.out, args)
        if args.only in (None, "resume"):
            checks += run_cut(args.out, args)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        checks.append(("runs completed", False, str(e)))
    ok = all(c[1] for c in checks)
    (args.out / "gpu_faults.json").write_text(json.dumps(
        {"recipe": args.recipe, "steps": args.steps, "overrides": args.overrides, "ok": ok,
         "seconds": time.perf_counter() - t0, "checks": [dict(check=c, ok=p, detail=d) for c, p, d in checks]},
        indent=1))
    print(f"\n{args.recipe}, {args.steps} steps: {'PASS' if ok else 'FAIL'}")
    for c, p, d in checks:
        print(f"{'PASS' if p else 'FAIL'}  {c:<48} {d}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
