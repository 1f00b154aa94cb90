"""The seed's sampler experiments, stock vLLM against the exact plugin, on CPU (the
tiny model, the default) or on a GPU (real model shapes, with CUDA graphs and timings).

    python scripts/seed_experiments.py                        # CPU: tiny model, N=200, experiment 1
    python scripts/seed_experiments.py --model-dir DIR --n 1000 --max-tokens 64
    python scripts/seed_experiments.py OUT_DIR --device cuda --shape 0.6b --experiments 1
    python scripts/seed_experiments.py OUT_DIR --device cuda --shape 8b --experiments 1,2 --graphs off,on

Experiment 1 (batch invariance): N temperature-0 copies of one prompt among filler
requests of other lengths, so the copies run in different batches, positions, prefill/
decode mixes and chunks. Counted: distinct token sequences and distinct logprob
sequences among the N copies. Greedy decoding is deterministic given the logits, so any
spread comes from batch-dependent reductions. Exact must give 1 and 1; stock gives
whatever the batch variance of vLLM's kernels gives (often > 1 on real models; a tiny
random model with near-uniform logits is where small differences flip an argmax most
easily).
  cpu:  a 24-token prompt, `--max-tokens` new tokens, sent in groups of varied sizes
        (GROUP_SIZES), each group mixed with 0-3 fillers, through a small engine
        (max_num_seqs 16, max_num_batched_tokens 96).
  cuda: a 40-token prompt, 100 new tokens, shuffled among N fillers of 5-400 tokens
        (1-100 new tokens each), all sent at once; wall time of the call.

Experiment 2 (speed, cuda only): N sequences of 20-60 prompt tokens and 90-110 new
tokens (EOS ignored), all sent at once; wall time of the `Sampler.sample` call. Then
decode tokens/s at fixed batch sizes: B requests of 40 + 100 tokens sent alone (the
engine allows 256), for B in 1, 8, 64, 256, in `--reps` interleaved rounds (default 3;
the median per B is reported: one call of 100 tokens takes 0.3-2 s and moves by 10%).

Each (mode, CUDA graphs) pair runs in its own process (vLLM loads plugins per process;
stock runs with VLLM_PLUGINS=none): stock = vLLM's own Qwen3 and kernels (cuda, with
graphs: vLLM's default torch.compile + CUDA graphs); exact = the rlhf_exact plugin
(with graphs: decode steps in full CUDA graphs, no torch.compile; "mixed": every step of
up to 1024 tokens in full CUDA graphs, prefill and mixed ones too). The cuda engines:
max_num_seqs 256, max_num_batched_tokens 8192, prefix caching on, 32 GiB of KV cache.

The model: cpu, the tiny random Qwen3 (rlhf_exact/models/tiny.py); cuda, a random bf16
checkpoint of the given shape (Qwen3-0.6B or Qwen3-8B; normal(0, 0.02) weights drawn on
the GPU, norms 1). Either is written to OUT_DIR/model-SHAPE once and reused (OUT_DIR is
a temporary folder on cpu when not given). Results: OUT_DIR/seed_experiments_SHAPE.json,
a log per child process, and a table on stdout.

Departures from the usual experiment (e.g. Thinking Machines' "Defeating
Nondeterminism in LLM Inference", 1000 completions of Qwen3-235B on GPU): random
weights, greedy rather than temperature-0 sampling with a seed (the same thing in
vLLM), and filler requests to vary the batches deliberately.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
ENGINES = {
    "cpu": dict(max_model_len=256, max_num_seqs=16, block_size=32, max_num_batched_tokens=96),
    "cuda": dict(max_model_len=1024, max_num_seqs=256, max_num_batched_tokens=8192, kv_cache_memory_bytes=32 << 30,
                 gpu_memory_utilization=0.85, skip_tokenizer_init=True),
}
GROUP_SIZES = (1, 2, 5, 16, 3, 32, 7, 64, 11, 24)
MARK = "SEED_EXPERIMENTS "


def write_model(path: pathlib.Path, shape: str) -> pathlib.Path:
    """A random bf16 Qwen3 checkpoint of `shape` at `path` (kept if it is already there);
    shape "tiny" is the tiny CPU model."""
    if (path / "config.json").is_file():
        return path
    import torch

    if shape == "tiny":
        from rlhf_exact.models.tiny import make_tiny_model_dir

        return make_tiny_model_dir(path)
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
    saved = save_model(model, path, max_shard_bytes=4 << 30)
    # the engines start in child processes and check that gpu_memory_utilization of the card
    # is free: this process must not keep the model (16 GB at 8B) in torch's cache
    del model, gen, p
    torch.cuda.empty_cache()
    return saved


def groups(n: int) -> list[int]:
    """Split n copies into varied group sizes (cycling GROUP_SIZES)."""
    out, i = [], 0
    while sum(out) < n:
        out.append(min(GROUP_SIZES[i % len(GROUP_SIZES)], n - sum(out)))
        i += 1
    return out


def crowds_cpu(n: int, max_tokens: int) -> list[list[tuple]]:
    """Experiment 1's calls on CPU: per group, 0-3 fillers then the group's copies; each
    job is (prompt ids, RequestParams, is_copy)."""
    from rlhf_exact.sampler.engine import RequestParams

    prompt = [(13 * j) % 200 + 20 for j in range(24)]
    copy = RequestParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    filler = RequestParams(max_tokens=max_tokens)
    calls = []
    for k, g in enumerate(groups(n)):
        fill = [[(7 * j + k) % 300 + 10 for j in range(5 + 9 * i)] for i in range(k % 4)]
        calls.append([(f, filler, False) for f in fill] + [(prompt, copy, True)] * g)
    return calls


def crowds_cuda(n: int) -> list[list[tuple]]:
    """Experiment 1's call on a GPU: the n copies shuffled among n fillers, one call."""
    from rlhf_exact.sampler.engine import RequestParams

    rng = random.Random(0)
    prompt = [rng.randrange(10, 100_000) for _ in range(40)]
    fillers = [[rng.randrange(10, 100_000) for _ in range(rng.randrange(5, 401))] for _ in range(n)]
    copy = RequestParams(max_tokens=100, temperature=0, ignore_eos=True)
    jobs = [(prompt, copy, True)] * n + [(f, RequestParams(max_tokens=rng.randrange(1, 101), temperature=0,
                                                            ignore_eos=True), False) for f in fillers]
    rng.shuffle(jobs)
    return [jobs]


def experiment1(sampler, calls: list[list[tuple]]) -> dict:
    """Distinct token and logprob sequences among the copies sent in `calls`."""
    tokens, logprobs, counts, seconds = set(), set(), {}, 0.0
    for jobs in calls:
        t0 = time.perf_counter()
        res = sampler.sample([j[0] for j in jobs], params=[j[1] for j in jobs])
        seconds += time.perf_counter() - t0
        for (_, _, is_copy), r in zip(jobs, res):
            if r.error:
                raise RuntimeError(r.error)
            if is_copy:
                c = r.completions[0]
                tokens.add(tuple(c.token_ids))
                logprobs.add(c.logprobs.numpy().tobytes())
                counts[tuple(c.token_ids)] = counts.get(tuple(c.token_ids), 0) + 1
    copies = sum(counts.values())
    return {"copies": copies, "distinct_tokens": len(tokens), "distinct_logprobs": len(logprobs),
            "largest_share": max(counts.values()) / copies, "seconds": seconds}


def workload2(rng: random.Random, n: int, vocab: int) -> tuple[list, list]:
    """Experiment 2's one call: n prompts of 20-60 tokens, 90-110 greedy new tokens each."""
    from rlhf_exact.sampler.engine import RequestParams

    prompts = [[rng.randrange(10, min(100_000, vocab)) for _ in range(rng.randrange(20, 61))] for _ in range(n)]
    params = [RequestParams(max_tokens=rng.randrange(90, 111), temperature=0, ignore_eos=True) for _ in range(n)]
    return prompts, params


def experiment2(sampler, n: int, reps: int = 3, batches=(1, 8, 64, 256), new_tokens: int = 100) -> dict:
    """The timed call, then decode tokens/s at each batch size: `reps` rounds over the
    batch sizes (interleaved, so a slow stretch of the machine hits every size), the
    median per size in tokens_per_s_by_batch and every round in ..._runs."""
    from rlhf_exact.sampler.engine import RequestParams

    rng = random.Random(1)
    prompts, params = workload2(rng, n, sampler.vocab_size)
    t0 = time.perf_counter()
    res = sampler.sample(prompts, params=params)
    seconds = time.perf_counter() - t0
    generated = sum(len(r.completions[0].token_ids) for r in res)
    runs = {b: [] for b in batches}
    for _ in range(reps):
        for b in batches:
            ps = [[rng.randrange(10, min(100_000, sampler.vocab_size)) for _ in range(40)] for _ in range(b)]
            t0 = time.perf_counter()
            out = sampler.sample(ps, params=RequestParams(max_tokens=new_tokens, temperature=0, ignore_eos=True))
            dt = time.perf_counter() - t0
            runs[b].append(sum(len(r.completions[0].token_ids) for r in out) / dt)
    return {"sequences": n, "new_tokens": generated, "seconds": seconds,
            "tokens_per_s_by_batch": {b: statistics.median(v) for b, v in runs.items()},
            "tokens_per_s_by_batch_runs": runs}


def profile2(sampler, n: int) -> dict:
    """Experiment 2's call three times more, from an empty prefix cache each time: once
    with every engine step timed by type, once under torch.profiler, once under cProfile
    (step_profile.py)."""
    from rlhf_exact.sampler.step_profile import StepRecord, summarize

    out = {}
    for what in ("steps", "ops", "python"):
        prompts, params = workload2(random.Random(1), n, sampler.vocab_size)
        sampler.llm.reset_prefix_cache()
        sampler.llm.collective_rpc("exact_profile_start", args=(what,))
        t0 = time.perf_counter()
        errors = [r.error for r in sampler.sample(prompts, params=params) if r.error]
        if errors:
            raise RuntimeError(f"profile2: {len(errors)} requests failed, the first: {errors[0]}")
        out[f"{what}_wall_s"] = time.perf_counter() - t0
        got = sampler.llm.collective_rpc("exact_profile_stop")[0]
        out[what] = summarize([StepRecord(**r) for r in got]) if what == "steps" else got
    return out


GRAPHS = {"off": False, "on": True, "mixed": "mixed"}  # --graphs -> Sampler(cuda_graphs=)


def child(args, mode: str, graphs: bool | str) -> dict:
    """One engine in this process: the requested experiments on it."""
    from rlhf_exact.sampler.engine import Sampler, RequestParams

    t0 = time.perf_counter()
    sampler = Sampler(args.model_dir, exact=(mode == "exact"), cuda_graphs=graphs, dtype=args.dtype,
                      **ENGINES[args.device])
    row = {"mode": mode, "graphs": graphs, "model_class": sampler.model_class, "start_s": time.perf_counter() - t0}
    if args.device == "cuda":
        sampler.sample([[11, 12, 13]], params=RequestParams(max_tokens=8, temperature=0))  # first-call costs
    if 1 in args.experiments:
        calls = crowds_cuda(args.n) if args.device == "cuda" else crowds_cpu(args.n, args.max_tokens)
        row["exp1"] = experiment1(sampler, calls)
    if 2 in args.experiments:
        row["exp2"] = experiment2(sampler, args.n, args.reps)
    if args.profile:
        row["profile"] = profile2(sampler, args.n)
    sampler.shutdown()
    return row


def run_child(args, out: pathlib.Path, mode: str, graphs: str) -> dict:
    """Run one (mode, graphs) pair in a child process; its row, or an error row naming its log."""
    env = dict(os.environ)
    if mode == "stock":
        env["VLLM_PLUGINS"] = "none"  # vLLM loads no general plugin: its own Qwen3 and kernels
    cmd = [sys.executable, __file__, str(out), "--device", args.device, "--shape", args.shape, "--graphs", graphs,
           "--experiments", ",".join(map(str, args.experiments)), "--n", str(args.n),
           "--max-tokens", str(args.max_tokens), "--reps", str(args.reps), "--dtype", args.dtype,
           "--model-dir", args.model_dir,
           *(["--profile"] if args.profile else []), "--child", mode, graphs]
    log = out / f"seed_{args.shape}_{mode}_graphs-{graphs}.log"
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True, timeout=args.timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
        if lines:
            return json.loads(lines[-1][len(MARK):])
        sys.stderr.write(log.read_text()[-4000:])
        return {"mode": mode, "graphs": GRAPHS[graphs], "error": f"exit {proc.returncode}, see {log}"}
    except subprocess.TimeoutExpired:
        return {"mode": mode, "graphs": GRAPHS[graphs], "error": f"timeout, see {log}"}


def print_table(args, rows: list[dict]) -> None:
    print(f"\n{args.device}, shape {args.shape}, n={args.n}")
    if args.device == "cpu":
        print(f"{'mode':>6} {'exp1 tok':>8} {'exp1 lp':>8}  most common")
    else:
        print(f"{'mode':>6} {'graphs':>6} {'start s':>8} {'exp1 tok':>8} {'exp1 lp':>8} {'exp2 s':>8}  "
              "tokens/s at batch 1/8/64/256")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:>6} {str(r['graphs']):>6}  {r['error']}")
            continue
        e1, e2 = r.get("exp1", {}), r.get("exp2", {})
        if args.device == "cpu":
            print(f"{r['mode']:>6} {e1['distinct_tokens']:>8} {e1['distinct_logprobs']:>8}  "
                  f"{e1['largest_share']:.1%} ({r['model_class']})")
            continue
        tps = "/".join(f"{v:.0f}" for v in e2.get("tokens_per_s_by_batch", {}).values())
        print(f"{r['mode']:>6} {str(r['graphs']):>6} {r['start_s']:8.1f} {e1.get('distinct_tokens', '-'):>8} "
              f"{e1.get('distinct_logprobs', '-'):>8} {e2.get('seconds', float('nan')):8.2f}  {tps}")
    profiled = [r for r in rows if "profile" in r]
    if profiled:
        print("\nexperiment 2 by step type (steps timed singly: step_profile.py); ms/step, launch share, steps")
        print(f"{'mode':>6} {'graphs':>6} " + " ".join(f"{k:>22}" for k in ("prefill", "mixed", "decode", "all")))
        for r in profiled:
            st = r["profile"]["steps"]
            cells = [f"{st[k]['ms_per_step']:8.2f} {st[k]['launch_share']:5.0%} {st[k]['steps']:>6}" if k in st
                     else f"{'-':>22}" for k in ("prefill", "mixed", "decode", "all")]
            print(f"{r['mode']:>6} {str(r['graphs']):>6} " + " ".join(f"{c:>22}" for c in cells))
        for r in profiled:
            for what in ("kernels", "cpu_ops"):
                ops = r["profile"]["ops"][what][:4]
                print(f"{r['mode']:>6} {str(r['graphs']):>6} top {what}: "
                      + ", ".join(f"{o['op'][:40]} {o['share']:.0%}" for o in ops))
            mixed = r["profile"].get("python", {}).get("mixed")
            if mixed:
                print(f"{r['mode']:>6} {str(r['graphs']):>6} mixed steps, Python own time: "
                      + ", ".join(f"{f['func'][-48:]} {f['share']:.0%}" for f in mixed["self"][:5]))


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="output folder: the model, logs and results JSON (required with "
                    "--device cuda; a temporary folder on cpu when left out)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--shape", choices=["tiny", *sorted(SHAPES)], help="the model (default: tiny on cpu, 0.6b on cuda)")
    ap.add_argument("--experiments", help="comma list of 1, 2 (default: 1 on cpu, 1,2 on cuda; 2 is cuda only)")
    ap.add_argument("--modes", default="stock,exact", help="comma list of stock, exact")
    ap.add_argument("--graphs", help="CUDA graphs: comma list of off, on, mixed (exact: mixed steps in graphs "
                    "too; default: off on cpu, on on cuda)")
    ap.add_argument("--n", type=int, help="copies (experiment 1) and sequences (experiment 2); "
                    "default 200 on cpu, 1000 on cuda")
    ap.add_argument("--max-tokens", type=int, default=32, help="cpu: greedy tokens per copy (default 32; cuda: 100)")
    ap.add_argument("--reps", type=int, default=3, help="experiment 2: rounds of the decode tokens/s "
                    "measurement (the median per batch size is reported; default 3)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--model-dir", help="the checkpoint (default: OUT/model-SHAPE); written there if absent")
    ap.add_argument("--profile", action="store_true", help="then experiment 2's call again, timed by engine"
                    " step type, under torch.profiler and under cProfile (sampler/step_profile.py)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: MODE GRAPHS
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.shape = args.shape or ("0.6b" if cuda else "tiny")
    args.n = args.n or (1000 if cuda else 200)
    args.graphs = args.graphs or ("on" if cuda else "off")
    if set(args.graphs.split(",")) - set(GRAPHS):
        ap.error(f"--graphs: comma list of {', '.join(GRAPHS)}, got {args.graphs!r}")
    args.experiments = [int(e) for e in (args.experiments or ("1,2" if cuda else "1")).split(",")]
    if args.n < 1 or args.max_tokens < 1 or args.reps < 1:
        ap.error("--n, --max-tokens and --reps must be >= 1")
    if cuda and not args.out:
        ap.error("--device cuda needs the output folder OUT")
    if not cuda and (args.shape != "tiny" or 2 in args.experiments or args.graphs != "off"):
        ap.error("--device cpu runs the tiny model, experiment 1 only (and --profile), without CUDA graphs")
    if any(m not in ("stock", "exact") for m in args.modes.split(",")):
        ap.error(f"--modes: a comma list of stock, exact (got {args.modes!r})")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        print(MARK + json.dumps(child(args, args.child[0], GRAPHS[args.child[1]])), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        args.model_dir = str(write_model(pathlib.Path(args.model_dir or out / f"model-{args.shape}"), args.shape))
        print(f"model {args.model_dir} ready in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for graphs in args.graphs.split(","):
            for mode in args.modes.split(","):
                rows.append(run_child(args, out, mode, graphs))
                print(json.dumps(rows[-1]), flush=True)
        (out / f"seed_experiments_{args.shape}.json").write_text(json.dumps(rows, indent=1))
    print_table(args, rows)
    return int(any("error" in r for r in rows))


if __name__ == "__main__":
    sys.exit(main())
