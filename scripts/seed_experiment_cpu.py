"""The seed experiment on any machine vLLM runs on (the tiny model on CPU by default):
the same prompt N times at temperature 0 through the vLLM engine, in varied batches,
and the number of distinct completions, with the exact kernels (the rlhf_exact plugin)
and with stock vLLM (VLLM_PLUGINS=none). The GPU experiments at real model shapes, with
timing, are scripts/seed_experiments.py.

    python scripts/seed_experiment_cpu.py                  # tiny model, N=200
    python scripts/seed_experiment_cpu.py --model DIR --n 1000 --max-tokens 64

Greedy decoding is deterministic given the logits, so any spread comes from the logits
of the same prefix differing with the batch the request ran in (batch-dependent
reductions). The N copies are sent in groups of varied sizes, each group mixed with
filler requests of other lengths, so the copies see different batch sizes, positions
in the batch, prefill/decode mixes and chunking. Each mode runs in its own process
(the plugin is loaded per process by vLLM's entry point machinery).

Expected: exact = 1 distinct completion. Stock: whatever the batch variance of vLLM's
CPU kernels gives on this model (often > 1 on real models; a tiny random model with
near-uniform logits is where small differences flip an argmax most easily).

Departures from the usual experiment (e.g. Thinking Machines' "Defeating
Nondeterminism in LLM Inference", 1000 completions of Qwen3-235B on GPU): a tiny model
on CPU by default, greedy rather than temperature 0 sampling with a seed (the same
thing in vLLM), and filler requests to vary the batches deliberately.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

GROUP_SIZES = (1, 2, 5, 16, 3, 32, 7, 64, 11, 24)


def groups(n: int) -> list[int]:
    """Split n copies into varied group sizes (cycling GROUP_SIZES)."""
    out, i = [], 0
    while sum(out) < n:
        out.append(min(GROUP_SIZES[i % len(GROUP_SIZES)], n - sum(out)))
        i += 1
    return out


def run_mode(mode: str, model: str, n: int, max_tokens: int, dtype: str) -> dict:
    """Runs in the child process: returns {"mode", "n", "distinct", "largest_share"}."""
    from rlhf_exact.sampler.engine import Sampler, RequestParams

    sampler = Sampler(model, exact=(mode == "exact"), dtype=dtype, max_model_len=256, max_num_seqs=16,
                      block_size=32, max_num_batched_tokens=96)
    prompt = [(13 * j) % 200 + 20 for j in range(24)]
    greedy = RequestParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    filler = RequestParams(max_tokens=max_tokens)
    outs = []
    for k, g in enumerate(groups(n)):
        fill = [[(7 * j + k) % 300 + 10 for j in range(5 + 9 * i)] for i in range(k % 4)]
        res = sampler.sample(fill + [prompt] * g, params=[filler] * len(fill) + [greedy] * g)
        for r in res[len(fill):]:
            if r.error:
                raise RuntimeError(r.error)
            outs.append(tuple(r.completions[0].token_ids))
    counts = {}
    for o in outs:
        counts[o] = counts.get(o, 0) + 1
    sampler.shutdown()
    return {"mode": mode, "model_class": sampler.model_class, "n": len(outs), "distinct": len(counts), "largest_share": max(counts.values()) / len(outs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF model directory (default: a tiny random Qwen3 in a temp dir)")
    ap.add_argument("--n", type=int, default=200, help="copies of the prompt (default 200)")
    ap.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per completion (default 32)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--modes", default="exact,stock", help="comma list of exact, stock")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = ap.parse_args(argv)
    if args.n < 1 or args.max_tokens < 1:
        ap.error("--n and --max-tokens must be >= 1")
    if args.child:
        print("SEED_EXPERIMENT " + json.dumps(run_mode(args.child, args.model, args.n, args.max_tokens, args.dtype)),
              flush=True)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from rlhf_exact.models.tiny import make_tiny_model_dir

            model = str(make_tiny_model_dir(os.path.join(tmp, "tiny-qwen3")))
        rows = []
        for mode in args.modes.split(","):
            if mode not in ("exact", "stock"):
                ap.error(f"unknown mode {mode!r} (exact, stock)")
            env = dict(os.environ)
            if mode == "stock":
                env["VLLM_PLUGINS"] = "none"  # vLLM loads no general plugin: its own Qwen3 and CPU attention
            cmd = [sys.executable, __file__, "--child", mode, "--model", model,
                   "--n", str(args.n), "--max-tokens", str(args.max_tokens), "--dtype", args.dtype]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SEED_EXPERIMENT ")]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                print(f"{mode}: failed (exit {proc.returncode})")
                return 1
            rows.append(json.loads(lines[-1].removeprefix("SEED_EXPERIMENT ")))
    print(f"seed experiment: {args.n} greedy completions of one prompt ({args.max_tokens} tokens, {args.dtype}), "
          "varied batches")
    for r in rows:
        print(f"  {r['mode']:>5} ({r['model_class']}): {r['distinct']} distinct completion(s); "
              f"most common {r['largest_share']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
