"""Trainer forward+backward throughput: the exact Qwen3 (batch-invariant kernels)
against the same model code on stock torch ops.

"Stock" builds the same model on the stock op table (rlhf_exact/models/ops.py STOCK):
F.linear (cuBLAS), F.rms_norm, rotary in torch elementwise math, attention by
FlashAttention-2's varlen kernel on CUDA (per-sequence SDPA elsewhere; causal, GQA),
F.silu * up, log_softmax + gather. Module
code, shapes, packing and parameters are identical, so the ratio is the cost of the
kernels alone.

Default: Qwen3-0.6B shape (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128,
intermediate 3072, vocab 151936, tied), bf16 parameters, one micro-batch of 8192
tokens packed from sequences of --seq-len tokens; loss = sum of token logprobs.

    python benchmarks/bench_model.py                      # CUDA, 0.6B shape
    python benchmarks/bench_model.py --seq-len 1024 --activation-checkpointing
    python benchmarks/bench_model.py --device cpu --tiny  # smoke run on a laptop
    python benchmarks/bench_model.py --profile            # + the top kernels of one fwd+bwd, each model
"""
from __future__ import annotations

import argparse
import time

import torch

from rlhf_exact.models.ops import EXACT, STOCK
from rlhf_exact.models.qwen3 import Qwen3Config, Qwen3ForCausalLM, pack_sequences, packed_logprobs

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)


# ------------------------------------------------------------------ measurement

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(model, batch, device, warmup: int, iters: int) -> tuple[float, float, float]:
    """(forward ms, forward+backward ms, host ms of the forward+backward) per
    micro-batch, medians over iters. Host ms: until backward() returns to Python, before
    the device is synchronised (Python, checks and launches); near the fwd+bwd time, the
    host is what bounds the step, not the kernels."""
    fwd, both, host = [], [], []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            packed_logprobs(model, batch)
        _sync(device)
        t1 = time.perf_counter()
        lp = packed_logprobs(model, batch)
        (lp * batch.target_mask).sum().backward()
        th = time.perf_counter()
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append((t1 - t0) * 1e3)
            both.append((t2 - t1) * 1e3)
            host.append((th - t1) * 1e3)
    return tuple(sorted(x)[len(x) // 2] for x in (fwd, both, host))


def profile(model, batch, device, top: int) -> tuple[list[tuple[str, float, int]], float]:
    """(kernel or op name, ms, calls) of one forward+backward, the `top` heaviest by
    device time (CPU time on CPU), and the summed time of every kernel, from torch.profiler.
    The sum against the wall-clock fwd+bwd says how much of it the host's launches add:
    on the H200 the exact model's wall time moved between 113 and 182 ms over calls
    while its kernels summed the same."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    model.zero_grad(set_to_none=True)
    _sync(device)
    with torch_profile(activities=acts) as prof:
        lp = packed_logprobs(model, batch)
        (lp * batch.target_mask).sum().backward()
        _sync(device)
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    if device == "cuda":  # device kernels only (the CPU-side op rows carry no device time of their own)
        rows = [e for e in rows if e.device_type == torch.autograd.DeviceType.CUDA] or rows
    rows.sort(key=lambda e: -getattr(e, attr))
    total = sum(getattr(e, attr) for e in rows) / 1e3
    return [(e.key, getattr(e, attr) / 1e3, e.count) for e in rows[:top]], total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny shape (smoke test) instead of Qwen3-0.6B")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per micro-batch")
    ap.add_argument("--seq-len", type=int, default=2048, help="length of each packed sequence")
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed iterations first (on a freshly started GPU, 1-2 gave a bimodal forward)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--profile", type=int, nargs="?", const=15, default=0, metavar="TOP",
                    help="also print the TOP (default 15) heaviest kernels of one fwd+bwd of each model")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu --tiny for a smoke run)")

    shape = dict(TINY if args.tiny else QWEN3_0_6B)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    cfg = Qwen3Config(**shape, max_position_embeddings=max(args.seq_len, 4096))
    def build(ops):
        model = Qwen3ForCausalLM(cfg, device=args.device, dtype=torch.bfloat16,
                                 activation_checkpointing=args.activation_checkpointing, ops=ops)
        model.init_weights(seed=0)  # the same weights for both
        return model
    g = torch.Generator().manual_seed(0)
    lens = [args.seq_len] * (args.tokens // args.seq_len)
    if args.tokens % args.seq_len:
        lens.append(args.tokens % args.seq_len)
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
    batch = pack_sequences(seqs).to(args.device)

    tops = {}
    exact_model = build(EXACT)
    exact = measure(exact_model, batch, args.device, args.warmup, args.iters)
    if args.profile:
        tops["exact"] = profile(exact_model, batch, args.device, args.profile)
    del exact_model
    stock_model = build(STOCK)
    stock = measure(stock_model, batch, args.device, args.warmup, args.iters)
    if args.profile:
        tops["stock"] = profile(stock_model, batch, args.device, args.profile)
    del stock_model

    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"Qwen3 {'tiny' if args.tiny else '0.6B'} shape, {cfg.num_hidden_layers} layers, bf16, {dev}, "
          f"{args.tokens} tokens/micro-batch as {len(lens)} x {args.seq_len}, "
          f"activation checkpointing {'on' if args.activation_checkpointing else 'off'}")
    print(f"{'model':<8} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd+bwd tok/s':>14} {'time / stock':>13} "
          f"{'host ms':>8}")
    for name, (f_ms, fb_ms, h_ms) in (("stock", stock), ("exact", exact)):
        print(f"{name:<8} {f_ms:9.1f} {fb_ms:11.1f} {args.tokens / fb_ms * 1e3:14.0f} {fb_ms / stock[1]:12.2f}x "
              f"{h_ms:8.1f}")
    if tops:
        print(f"\n{'model':<8} {'kernels ms':>11} {'wall ms':>9} {'wall - kernels':>15}"
              "  (kernels: one profiled fwd+bwd; wall: the median above)")
        for name, (_, fb_ms, _) in (("stock", stock), ("exact", exact)):
            kern = tops[name][1]
            print(f"{name:<8} {kern:11.1f} {fb_ms:9.1f} {fb_ms - kern:15.1f}")
    for name, (rows, _) in tops.items():
        top_ms = sum(ms for _, ms, _ in rows)
        print(f"\n{name}: the {len(rows)} heaviest kernels of one fwd+bwd ({top_ms:.1f} ms among them)")
        for key, ms, calls in rows:
            print(f"  {ms:8.2f} ms {calls:6d} calls  {key[:100]}")


if __name__ == "__main__":
    main()
