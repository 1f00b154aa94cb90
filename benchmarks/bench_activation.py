"""Benchmark silu_and_mul against F.silu(gate) * up on the Qwen3-8B MLP
(intermediate 12288: x [T, 24576] -> [T, 12288]). Forward only; median ms;
ratio = ours / stock.

    python benchmarks/bench_activation.py [--quick] [--device cpu]
"""
import torch

from _common import QWEN3_8B, parse_args, print_table, timer
from exact_kernels.activation import silu_and_mul


def main():
    args = parse_args(__doc__)
    t = timer(args)
    I = QWEN3_8B["intermediate"]
    rows = []
    for T in args.tokens:
        x = torch.randn(T, 2 * I, device=args.device, dtype=args.dtype)
        ours = t(lambda: silu_and_mul(x))
        stock = t(lambda: torch.nn.functional.silu(x[:, :I]) * x[:, I:])
        rows.append([T, f"{T}x{2 * I}", ours, stock, ours / stock])
    print_table("silu_and_mul forward (ms)", args, ["tokens", "shape", "ours", "F.silu(g)*u", "ours/stock"], rows)


if __name__ == "__main__":
    main()
