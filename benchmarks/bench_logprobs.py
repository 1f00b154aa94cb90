"""Benchmark token_logprobs and log_softmax against torch.log_softmax (+ gather) on
the Qwen3 vocab (logits [T, 151936]); row_mean against torch.mean on [T, 4096].
Forward only; median ms; ratio = ours / stock.

    python benchmarks/bench_logprobs.py [--quick] [--device cpu]
"""
import torch

from _common import QWEN3_8B, parse_args, print_table, timer
from exact_kernels.logprobs import log_softmax, row_mean, token_logprobs


def main():
    args = parse_args(__doc__)
    t = timer(args)
    V, H = QWEN3_8B["vocab"], QWEN3_8B["hidden"]
    rows = []
    for T in args.tokens:
        logits = torch.randn(T, V, device=args.device, dtype=args.dtype)
        ids = torch.randint(0, V, (T,), device=args.device)
        ours = t(lambda: token_logprobs(logits, ids))
        stock = t(lambda: torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None]))
        rows.append(["token_logprobs", T, f"{T}x{V}", ours, stock, ours / stock])
        logits = ids = None  # frees [T, V] before the next size allocates its own
    for T in args.tokens:
        logits = torch.randn(T, V, device=args.device, dtype=args.dtype)
        ours = t(lambda: log_softmax(logits))
        stock = t(lambda: torch.log_softmax(logits.float(), -1))
        rows.append(["log_softmax", T, f"{T}x{V}", ours, stock, ours / stock])
        logits = None
    for T in args.tokens:
        x = torch.randn(T, H, device=args.device, dtype=args.dtype)
        ours = t(lambda: row_mean(x))
        stock = t(lambda: x.float().mean(-1))
        rows.append(["row_mean", T, f"{T}x{H}", ours, stock, ours / stock])
    print_table("logprobs forward (ms)", args, ["op", "tokens", "shape", "ours", "torch", "ours/torch"], rows)


if __name__ == "__main__":
    main()
