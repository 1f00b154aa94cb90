"""Benchmark apply_rotary against the Hugging Face rotate_half composite on Qwen3-8B
q [T, 32, 128] and k [T, 8, 128] (neox style; the composite gathers cos/sin by
position and casts them to x.dtype, as HF does). Forward only; median ms;
ratio = ours / stock.

    python benchmarks/bench_rotary.py [--quick] [--device cpu]
"""
import torch

from _common import QWEN3_8B, parse_args, print_table, timer
from exact_kernels.rotary import apply_rotary, rotary_table


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def hf_apply(x, positions, cos_full, sin_full):
    c = cos_full[positions].to(x.dtype).unsqueeze(1)
    s = sin_full[positions].to(x.dtype).unsqueeze(1)
    return x * c + rotate_half(x) * s


def main():
    args = parse_args(__doc__)
    t = timer(args)
    D, P = QWEN3_8B["head_dim"], 40960
    cos, sin = rotary_table(P, D, 1e6, args.device)
    cos_full, sin_full = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    rows = []
    for name, heads in (("q", QWEN3_8B["q_heads"]), ("k", QWEN3_8B["kv_heads"])):
        for T in args.tokens:
            x = torch.randn(T, heads, D, device=args.device, dtype=args.dtype)
            pos = torch.randint(0, P, (T,), device=args.device)
            ours = t(lambda: apply_rotary(x, pos, cos, sin))
            stock = t(lambda: hf_apply(x, pos, cos_full, sin_full))
            rows.append([name, T, f"{T}x{heads}x{D}", ours, stock, ours / stock])
    print_table("apply_rotary forward (ms)", args, ["case", "tokens", "shape", "ours", "HF rotate_half", "ours/stock"],
                rows)


if __name__ == "__main__":
    main()
