"""The seed's two sampler experiments on a GPU, stock vLLM against the exact plugin.

    python scripts/seed_experiments.py OUT_DIR --shape 0.6b --experiments 1
    python scripts/seed_experiments.py OUT_DIR --shape 8b --experiments 1,2 --graphs off,on

Experiment 1 (batch invariance): N temperature-0 completions (100 tokens) of one
40-token prompt, shuffled among N filler requests of 5-400 tokens (1-100 new tokens
each), all sent at once, so the copies run in different batches, positions, prefill/
decode mixes and chunks. Counted: distinct token sequences and distinct logprob
sequences among the N copies. Greedy decoding is deterministic given the logits, so any
spread comes from batch-dependent reductions. Exact must give 1 and 1.

Experiment 2 (speed): N sequences of 20-60 prompt tokens and 90-110 new tokens (EOS
ignored), all sent at once; wall time of the `Sampler.sample` call. Then decode
tokens/s at fixed batch sizes: B requests of 40 + 100 tokens sent alone (the engine
allows 256), for B in 1, 8, 64, 256.

Each (mode, CUDA graphs) pair runs in its own process (vLLM loads plugins per process;
stock runs with VLLM_PLUGINS=none): stock = vLLM's own Qwen3, FlashAttention and cuBLAS
(with graphs: vLLM's default torch.compile + CUDA graphs); exact = the rlhf_exact plugin
(with graphs: decode steps in full CUDA graphs, no torch.compile). Both engines:
max_num_seqs 256, max_num_batched_tokens 8192, prefix caching on, 32 GiB of KV cache.

The model is a random bf16 checkpoint of the given shape (Qwen3-0.6B or Qwen3-8B;
normal(0, 0.02) weights drawn on the GPU, norms 1), written to OUT_DIR/model-SHAPE once
and reused. Results: OUT_DIR/seed_experiments_SHAPE.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import time

SHAPES = {
    "0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
ENGINE = dict(max_model_len=1024, max_num_seqs=256, max_num_batched_tokens=8192, kv_cache_memory_bytes=32 << 30,
              gpu_memory_utilization=0.85, skip_tokenizer_init=True)
MARK = "SEED_EXPERIMENTS "


def write_model(path: pathlib.Path, shape: str) -> pathlib.Path:
    """A random bf16 Qwen3 checkpoint of `shape` at `path` (kept if it is already there)."""
    if (path / "config.json").is_file():
        return path
    import torch

    from rlhf_exact.models.hf_io import save_model
    from rlhf_exact.models.qwen3 import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**SHAPES[shape], rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=151645, pad_token_id=151643)
    model = Qwen3ForCausalLM(config, device="cuda", dtype=torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, device="cuda", dtype=torch.float32) * 0.02)
    return save_model(model, path, max_shard_bytes=4 << 30)


def experiment1(sampler, n: int) -> dict:
    from rlhf_exact.sampler.engine import RequestParams

    rng = random.Random(0)
    prompt = [rng.randrange(10, 100_000) for _ in range(40)]
    fillers = [[rng.randrange(10, 100_000) for _ in range(rng.randrange(5, 401))] for _ in range(n)]
    copy = RequestParams(max_tokens=100, temperature=0, ignore_eos=True)
    jobs = [(prompt, copy, True)] * n + [(f, RequestParams(max_tokens=rng.randrange(1, 101), temperature=0,
                                                            ignore_eos=True), False) for f in fillers]
    rng.shuffle(jobs)
    t0 = time.perf_counter()
    res = sampler.sample([j[0] for j in jobs], params=[j[1] for j in jobs])
    seconds = time.perf_counter() - t0
    tokens, logprobs = set(), set()
    for (_, _, is_copy), r in zip(jobs, res):
        if r.error:
            raise RuntimeError(r.error)
        if is_copy:
            c = r.completions[0]
            tokens.add(tuple(c.token_ids))
            logprobs.add(c.logprobs.numpy().tobytes())
    return {"copies": n, "distinct_tokens": len(tokens), "distinct_logprobs": len(logprobs), "seconds": seconds}


def experiment2(sampler, n: int) -> dict:
    from rlhf_exact.sampler.engine import RequestParams

    rng = random.Random(1)
    prompts = [[rng.randrange(10, 100_000) for _ in range(rng.randrange(20, 61))] for _ in range(n)]
    params = [RequestParams(max_tokens=rng.randrange(90, 111), temperature=0, ignore_eos=True) for _ in range(n)]
    t0 = time.perf_counter()
    res = sampler.sample(prompts, params=params)
    seconds = time.perf_counter() - t0
    new_tokens = sum(len(r.completions[0].token_ids) for r in res)
    by_batch = {}
    for b in (1, 8, 64, 256):
        ps = [[rng.randrange(10, 100_000) for _ in range(40)] for _ in range(b)]
        t0 = time.perf_counter()
        out = sampler.sample(ps, params=RequestParams(max_tokens=100, temperature=0, ignore_eos=True))
        dt = time.perf_counter() - t0
        by_batch[b] = sum(len(r.completions[0].token_ids) for r in out) / dt
    return {"sequences": n, "new_tokens": new_tokens, "seconds": seconds, "tokens_per_s_by_batch": by_batch}


def child(mode: str, graphs: bool, model: str, experiments: list[int], n: int) -> dict:
    from rlhf_exact.sampler.engine import Sampler, RequestParams

    t0 = time.perf_counter()
    sampler = Sampler(model, exact=(mode == "exact"), cuda_graphs=graphs, **ENGINE)
    row = {"mode": mode, "graphs": graphs, "model_class": sampler.model_class, "start_s": time.perf_counter() - t0}
    sampler.sample([[11, 12, 13]], params=RequestParams(max_tokens=8, temperature=0))  # first-call costs
    if 1 in experiments:
        row["exp1"] = experiment1(sampler, n)
    if 2 in experiments:
        row["exp2"] = experiment2(sampler, n)
    sampler.shutdown()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (the model and the results JSON go there)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.6b")
    ap.add_argument("--experiments", default="1,2", help="comma list of 1, 2")
    ap.add_argument("--modes", default="stock,exact")
    ap.add_argument("--graphs", default="on", help="comma list of off, on")
    ap.add_argument("--n", type=int, default=1000, help="copies (experiment 1) and sequences (experiment 2)")
    ap.add_argument("--model-dir", help="an existing checkpoint (default: OUT/model-SHAPE, written if absent)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: MODE GRAPHS
    args = ap.parse_args(argv)
    experiments = [int(e) for e in args.experiments.split(",")]
    if args.child:
        row = child(args.child[0], args.child[1] == "on", args.model_dir, experiments, args.n)
        print(MARK + json.dumps(row), flush=True)
        return 0

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = str(args.model_dir or write_model(out / f"model-{args.shape}", args.shape))
    print(f"model {model} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for graphs in args.graphs.split(","):
        for mode in args.modes.split(","):
            env = dict(os.environ)
            if mode == "stock":
                env["VLLM_PLUGINS"] = "none"
            cmd = [sys.executable, __file__, str(out), "--shape", args.shape, "--experiments", args.experiments,
                   "--n", str(args.n), "--model-dir", model, "--child", mode, graphs]
            log = out / f"seed_{args.shape}_{mode}_graphs-{graphs}.log"
            try:
                with open(log, "w") as f:
                    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True,
                                          timeout=args.timeout)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
                rows.append(json.loads(lines[-1][len(MARK):]) if lines else
                            {"mode": mode, "graphs": graphs == "on", "error": f"exit {proc.returncode}, see {log}"})
            except subprocess.TimeoutExpired:
                rows.append({"mode": mode, "graphs": graphs == "on", "error": f"timeout, see {log}"})
            print(json.dumps(rows[-1]), flush=True)
    (out / f"seed_experiments_{args.shape}.json").write_text(json.dumps(rows, indent=1))
    print(f"\nshape {args.shape}, n={args.n}")
    print(f"{'mode':>6} {'graphs':>6} {'start s':>8} {'exp1 tok':>8} {'exp1 lp':>8} {'exp2 s':>8}  tokens/s at batch 1/8/64/256")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:>6} {str(r['graphs']):>6}  {r['error']}")
            continue
        e1, e2 = r.get("exp1", {}), r.get("exp2", {})
        tps = "/".join(f"{v:.0f}" for v in e2.get("tokens_per_s_by_batch", {}).values())
        print(f"{r['mode']:>6} {str(r['graphs']):>6} {r['start_s']:8.1f} {e1.get('distinct_tokens', '-'):>8} "
              f"{e1.get('distinct_logprobs', '-'):>8} {e2.get('seconds', float('nan')):8.2f}  {tps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
