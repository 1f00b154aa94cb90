"""Shared helpers for the kernel benchmarks: argument parsing, timing and one
Markdown table per run.

CUDA timings are medians of triton.testing.do_bench; CPU timings are medians of
wall-clock repeats. Shapes default to Qwen3-8B (hidden 4096, head_dim 128, 32 q / 8 kv
heads, intermediate 12288, vocab 151936)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

QWEN3_8B = dict(hidden=4096, head_dim=128, q_heads=32, kv_heads=8, intermediate=12288, vocab=151936)
TOKENS = [1, 8, 32, 128, 512, 2048, 8192]
TOKENS_QUICK = [1, 32, 512, 8192]
TOKENS_CPU = [1, 8, 32]


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="fewer token counts and shorter timing")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; use --device cpu")
    args.dtype = getattr(torch, args.dtype)
    args.tokens = TOKENS_CPU if args.device == "cpu" else (TOKENS_QUICK if args.quick else TOKENS)
    return args


def timer(args):
    """Returns f -> median milliseconds."""
    if args.device == "cuda":
        import triton.testing

        warmup, rep = (10, 40) if args.quick else (25, 100)
        return lambda f: triton.testing.do_bench(f, warmup=warmup, rep=rep, return_mode="median")

    def cpu_time(f, n=11 if args.quick else 21):
        f()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    return cpu_time


def device_name(args) -> str:
    if args.device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


def print_table(title: str, args, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title} | {device_name(args)} | {str(args.dtype).replace('torch.', '')} | "
          f"torch {torch.__version__}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |")
