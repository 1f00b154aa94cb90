"""The real training loop at several trainer world sizes, checked bit for bit: a thin
driver over `python -m rlhf_exact.train` (Ray actors, vLLM sampler, FSDP2 trainer,
weight sync: the code a user runs), with no harness of its own.

    python scripts/world_size_check.py OUT_DIR                          # CPU, W = 1, 2, tiny recipe
    python scripts/world_size_check.py OUT_DIR --device cuda --world-sizes 1,2,4 --steps 3
    python scripts/world_size_check.py OUT_DIR --repeat                 # + the largest W once more
    python scripts/world_size_check.py OUT_DIR sampler.backend=tests.models.oracle_sampler:OracleSampler
                                        # the paged test oracle as the sampler (from the repository root)

For each W in --world-sizes, one run of --recipe with trainer.world_size=W and
cluster.device=--device for --steps steps (run directory OUT_DIR/wW; checkpoints,
evaluation and W&B off). Checks, each PASS or FAIL in the table:

  1. every step of every run: sampler/trainer parity exact (metrics.jsonl: parity/kl
     == 0, every token's logprob bitwise equal, importance ratio exactly 1). Steps after
     the first sample with the weights synced from the trainer, so this also checks the
     sync;
  2. the first step's rollout (reward/*, response_length/*) equal across W: it is
     sampled from the checkpoint with the run's seeds before any update, so the
     trainer's world size must not touch it;
  3. with --repeat: the largest W run again in OUT_DIR/wW-repeat; every deterministic
     metric of every step (reward, parity, train: loss, grad norm, ...) and every
     tensor of the exported final_model (safetensors read back, torch.equal) identical.

Reported, not checked: the final weights across W. FSDP2 sums the gradients of a
minibatch over ranks, so the order of that float sum (and the loss's) depends on W:
the training step is not invariant to the world size, only the logprobs are
(docs/design.md). The first update therefore differs in its last bits across W and
the runs part from there; the table says how many tensors are still equal.

tests/trainer/multi_gpu_check.py remains for what this cannot reach: trainer logprobs across
W on fixed sequences, and a bucketed NCCL weight sync on a GPU image without Ray or vLLM.
Exit code 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

DETERMINISTIC = ("reward/", "response_length/", "parity/", "train/", "data/")  # the rest is wall-clock


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder of the runs (each in OUT/wW; must not hold earlier runs)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--world-sizes", default="1,2", help="comma list of trainer world sizes (default 1,2)")
    ap.add_argument("--recipe", default="grpo_qwen3_tiny")
    ap.add_argument("--steps", type=int, default=2, help="training steps per run (default 2)")
    ap.add_argument("--repeat", action="store_true", help="run the largest W twice (check 3)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("overrides", nargs="*", default=[], help="more SECTION.KEY=VALUE for every run")
    args = ap.parse_args(argv)
    args.world_sizes = [int(w) for w in args.world_sizes.split(",")]
    return args


def train(args, world: int, name: str) -> pathlib.Path:
    """One run of the real entry point; its run directory."""
    out = pathlib.Path(args.out).resolve()
    cmd = [sys.executable, "-m", "rlhf_exact.train", f"recipe={args.recipe}", f"trainer.world_size={world}",
           f"cluster.device={args.device}", f"run.steps={args.steps}", f"run.output_dir={out}", f"run.name={name}",
           "run.save_every=0", "eval.every_steps=0", "logging.wandb_mode=disabled", "logging.progress_bars=false",
           *args.overrides]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {out / f'{name}.log'}")
    return out / name


def metrics(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def final_weights(run: pathlib.Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted((run / "final_model").glob("*.safetensors")):
        weights |= load_file(f)
    return weights


def parity_exact(steps: list[dict]) -> tuple[bool, str]:
    bad = [m["step"] for m in steps if not (m["parity/kl"] == 0.0 and m["parity/tokens_bitwise_equal_frac"] == 1.0
                                            and m["parity/ratio_min"] == 1.0 == m["parity/ratio_max"])]
    return not bad, f"{len(steps) - len(bad)}/{len(steps)} steps KL 0, every logprob equal, ratio 1"


def same_values(a: dict, b: dict, prefixes) -> list[str]:
    """The keys under `prefixes` whose values differ (or that one side lacks)."""
    keys = {k for k in (*a, *b) if k.startswith(prefixes)}
    return sorted(k for k in keys if a.get(k) != b.get(k))


def equal_tensors(a: dict, b: dict) -> tuple[int, int]:
    import torch

    return sum(k in b and torch.equal(a[k], b[k]) for k in a), max(len(a), len(b))


def checks(args, runs: dict[str, pathlib.Path]) -> list[tuple[str, str, bool | None, str]]:
    """Rows (check, config, passed or None for a report, numbers)."""
    rows = []
    for name, run in runs.items():
        ok, numbers = parity_exact(metrics(run))
        rows.append(("1 parity every step", name, ok, numbers))
    ref = f"w{args.world_sizes[0]}"
    for w in args.world_sizes[1:]:
        diff = same_values(metrics(runs[ref])[0], metrics(runs[f"w{w}"])[0], ("reward/", "response_length/"))
        rows.append(("2 first rollout across W", f"w{w} vs {ref}", not diff, f"differ: {diff}" if diff else
                     "reward/* and response_length/* equal"))
    if args.repeat:
        top = f"w{max(args.world_sizes)}"
        a, b = metrics(runs[top]), metrics(runs[f"{top}-repeat"])
        diff = sorted({k for x, y in zip(a, b) for k in same_values(x, y, DETERMINISTIC)})
        rows.append(("3 repeat: metrics", f"{top} vs {top}-repeat", not diff and len(a) == len(b),
                     f"differ: {diff}" if diff else f"{len(a)} steps, every deterministic metric equal"))
        eq, n = equal_tensors(final_weights(runs[top]), final_weights(runs[f"{top}-repeat"]))
        rows.append(("3 repeat: final weights", f"{top} vs {top}-repeat", eq == n, f"torch.equal {eq}/{n} tensors"))
    for w in args.world_sizes[1:]:
        eq, n = equal_tensors(final_weights(runs[ref]), final_weights(runs[f"w{w}"]))
        rows.append(("- final weights across W", f"w{w} vs {ref}", None,
                     f"torch.equal {eq}/{n} tensors (not invariant: gradient sums over ranks)"))
    return rows


def table(rows) -> str:
    lines = ["| check | runs | result | numbers |", "|---|---|---|---|"]
    for check, config, ok, numbers in rows:
        lines.append(f"| {check} | {config} | {'report' if ok is None else 'PASS' if ok else 'FAIL'} | {numbers} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    runs = {f"w{w}": train(args, w, f"w{w}") for w in args.world_sizes}
    if args.repeat:
        top = max(args.world_sizes)
        runs[f"w{top}-repeat"] = train(args, top, f"w{top}-repeat")
    rows = checks(args, runs)
    text = table(rows)
    (pathlib.Path(args.out) / "world_size_check.md").write_text(text + "\n")
    print(text)
    return int(any(ok is False for _, _, ok, _ in rows))


if __name__ == "__main__":
    sys.exit(main())
