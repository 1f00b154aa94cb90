"""Host cost of one eager generation step: the model's forward over a paged KV cache, as
the sampler runs it for steps it does not replay from a CUDA graph (prefill and mixed
steps), exact op table against the stock one.

The exact sampler's mixed steps are bound by the host (docs/benchmarks.md, "The sampler
on an H200"): about 1.8 ms of CPU per eager layer, where the GPU work is a fraction of
that. This measures that cost without vLLM around it, so a change to the Python path of
the model and kernels shows here first:

  host ms   time until `forward` returns to the CPU (the device synchronised before the
            call, not after): Python, checks, allocations and kernel launches
  step ms   the same call followed by a device synchronise
  us/layer  host ms per decoder layer

The rows build the same module code with the same weights: "exact" on
`rlhf_exact.models.ops.EXACT` (the trainer's layout, 7 linears per layer), "fused" the
same with `fuse_projections()` (the sampler's: q/k/v and gate/up as one linear each),
"stock" on `STOCK` (torch's linear, RMSNorm, rotary and SiLU). The paged attention
and KV-cache write are the exact kernels in all three (the model has no stock paged
path), so the ratio is the cost of the other ops' paths. The
metadata is built once, as vLLM's builder does, and handed over with `max_q_len`, so the
kernels read nothing back to the host.

    python benchmarks/bench_eager_step.py                         # CUDA, 0.6B shape
    python benchmarks/bench_eager_step.py --shape 8b --layers 8
    python benchmarks/bench_eager_step.py --device cpu            # tiny shape: the Python path only
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhf_exact.models.ops import EXACT, STOCK
from rlhf_exact.models.qwen3 import PagedContext, Qwen3Config, Qwen3ForCausalLM

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    "0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
BLOCK = 16


def step_batch(kind: str, decodes: int, context: int, chunk: int, device) -> dict:
    """One step's packed inputs: `decodes` sequences of `context` cached tokens plus one
    new token each; "mixed" adds a prompt chunk of `chunk` new tokens (a fresh sequence).
    Sequence b owns blocks [b * per, (b + 1) * per)."""
    q_lens = [1] * decodes + ([chunk] if kind == "mixed" else [])
    seq_lens = [context + 1] * decodes + ([chunk] if kind == "mixed" else [])
    per = -(-max(seq_lens) // BLOCK)
    table = torch.arange(len(q_lens) * per, dtype=torch.int32).reshape(len(q_lens), per)
    pos, slots = [], []
    for b, (q, n) in enumerate(zip(q_lens, seq_lens)):
        for j in range(n - q, n):
            pos.append(j)
            slots.append(int(table[b, j // BLOCK]) * BLOCK + j % BLOCK)
    cu = [0]
    for q in q_lens:
        cu.append(cu[-1] + q)

    def t(x, dtype):
        return torch.tensor(x, dtype=dtype, device=device)
    return {"tokens": len(pos), "num_blocks": len(q_lens) * per, "positions": t(pos, torch.int64),
            "block_table": table.to(device), "cu": t(cu, torch.int32), "seq_lens": t(seq_lens, torch.int32),
            "slots": t(slots, torch.int64), "max_q_len": max(q_lens)}


def measure(model, batch, caches, device, warmup: int, iters: int) -> tuple[float, float]:
    """Median (host ms, step ms) of the eager no-grad forward over the paged caches."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ids = torch.randint(0, model.config.vocab_size, (batch["tokens"],), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    ctx = PagedContext(caches, batch["block_table"], batch["cu"], batch["seq_lens"], batch["slots"],
                       batch["max_q_len"])
    host, step = [], []
    with torch.no_grad():
        for i in range(warmup + iters):
            sync()
            t0 = time.perf_counter()
            model.model(ids, batch["positions"], ctx)
            t1 = time.perf_counter()
            sync()
            t2 = time.perf_counter()
            if i >= warmup:
                host.append(1e3 * (t1 - t0))
                step.append(1e3 * (t2 - t0))
    return statistics.median(host), statistics.median(step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", choices=sorted(SHAPES), help="default: 0.6b on cuda, tiny on cpu")
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--decodes", type=int, default=64, help="decoding sequences in the step")
    ap.add_argument("--context", type=int, default=256, help="cached tokens of each decoding sequence")
    ap.add_argument("--chunk", type=int, default=512, help="prompt tokens added by a mixed step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device; use --device cpu")
    device = torch.device(args.device)
    shape = dict(SHAPES[args.shape or ("0.6b" if args.device == "cuda" else "tiny")])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = Qwen3Config(**shape)
    dtype = torch.bfloat16
    models = {}
    for name, ops in (("stock", STOCK), ("exact", EXACT), ("fused", EXACT)):
        models[name] = Qwen3ForCausalLM(config, device=device, dtype=dtype, ops=ops).eval()
        models[name].init_weights(seed=0)
    models["fused"].fuse_projections()
    rows = []
    for kind in ("decode", "mixed"):
        batch = step_batch(kind, args.decodes, args.context, args.chunk, device)
        caches = [tuple(torch.randn(batch["num_blocks"], BLOCK, config.num_key_value_heads, config.head_dim,
                                    dtype=dtype, device=device) for _ in range(2))
                  for _ in range(config.num_hidden_layers)]
        for name in models:
            host, step = measure(models[name], batch, caches, device, args.warmup, args.iters)
            rows.append((kind, batch["tokens"], name, host, step, 1e3 * host / config.num_hidden_layers))
    print(f"eager step, {args.device}, {shape['num_hidden_layers']} layers (hidden {shape['hidden_size']}), "
          f"bf16, {args.decodes} decodes of context {args.context}, mixed adds a {args.chunk}-token chunk")
    print(f"{'step':>7} {'tokens':>6} {'ops':>6} {'host ms':>9} {'step ms':>9} {'us/layer':>9} {'exact/stock':>12}")
    stock = {r[0]: r[3] for r in rows if r[2] == "stock"}
    for kind, tokens, name, host, step, per in rows:
        ratio = f"{host / stock[kind]:.2f}x host" if name != "stock" else ""
        print(f"{kind:>7} {tokens:>6} {name:>6} {host:9.2f} {step:9.2f} {per:9.0f} {ratio:>12}")


if __name__ == "__main__":
    main()
