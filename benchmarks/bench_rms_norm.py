"""Benchmark rms_norm against torch's F.rms_norm and the Hugging Face composite
(Qwen3RMSNorm) on Qwen3-8B shapes: the hidden norm [T, 4096] and the per-head q norm
[T * 32, 128]. Forward only; median ms; ratio = ours / stock.

    python benchmarks/bench_rms_norm.py [--quick] [--device cpu]
"""
import torch

from _common import QWEN3_8B, parse_args, print_table, timer
from exact_kernels.rms_norm import rms_norm

EPS = 1e-6


def hf_rms_norm(x, w):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def main():
    args = parse_args(__doc__)
    t = timer(args)
    rows = []
    for name, width, mult in (("hidden", QWEN3_8B["hidden"], 1), ("q_norm", QWEN3_8B["head_dim"], QWEN3_8B["q_heads"])):
        for T in args.tokens:
            x = torch.randn(T * mult, width, device=args.device, dtype=args.dtype)
            w = torch.randn(width, device=args.device, dtype=args.dtype)
            ours = t(lambda: rms_norm(x, w, EPS))
            fused = t(lambda: torch.nn.functional.rms_norm(x, (width,), w, EPS))
            hf = t(lambda: hf_rms_norm(x, w))
            rows.append([name, T, f"{T * mult}x{width}", ours, fused, hf, ours / fused, ours / hf])
    print_table("rms_norm forward (ms)", args,
                ["case", "tokens", "shape", "ours", "F.rms_norm", "HF composite", "ours/F", "ours/HF"], rows)


if __name__ == "__main__":
    main()
