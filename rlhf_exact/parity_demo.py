"""Batch-invariance demo: the README's first command until the training loop lands.

One fixed "prompt" row goes through a small logprob head (RMSNorm -> linear ->
log-softmax over a 32k vocabulary -> the logprob of one token) inside batches of many
sizes and positions, once on the stock torch path and once on the exact kernels. It
prints how many distinct bit patterns the row's logits and its token logprob took:
the exact path must give 1 and 1. (On the stock path the logits change with the
batch; a 1-ulp logit change is often, not always, absorbed when the logprob is rounded.)

    python -m rlhf_exact.parity_demo [--device cpu|cuda] [--dtype bf16|fp32]
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import exact_kernels as ek

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    g = torch.Generator().manual_seed(0)
    dev = args.device
    norm_w = (1 + 0.1 * torch.randn(args.hidden, generator=g)).to(dev, dtype)
    head = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(dev, dtype)
    row = torch.randn(1, args.hidden, generator=g).to(dev, dtype)
    target = torch.tensor([17], device=dev)

    def stock(x, t):
        h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        logits = F.linear(norm_w * h.to(dtype), head)
        return logits, torch.log_softmax(logits.float(), -1).gather(-1, t[:, None]).squeeze(-1)

    def exact(x, t):
        logits = ek.linear(ek.rms_norm(x, norm_w, 1e-6), head)
        return logits, ek.token_logprobs(logits, t, 1.0)

    def bits(t):
        return t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()

    sizes = [1, 2, 3, 4, 5, 8, 13, 16, 32, 64, 100, 128, 256]
    print(f"one row inside batches of {len(sizes)} sizes x 3 positions ({args.device}, {args.dtype})")
    for name, fn in (("stock torch", stock), ("exact kernels", exact)):
        seen_logits, seen = set(), set()
        for n in sizes:
            others = torch.randn(n, args.hidden, generator=g).to(dev, dtype)
            for pos in sorted({0, n // 2, n}):
                batch = torch.cat([others[:pos], row, others[pos:]])
                tgt = target.expand(batch.shape[0]).contiguous()
                logits, logprobs = fn(batch, tgt)
                seen_logits.add(bits(logits[pos]))
                seen.add(bits(logprobs[pos]))
        print(f"  {name:14s} distinct logits rows: {len(seen_logits):3d}   distinct logprobs: {len(seen)}")
        if name == "exact kernels" and (len(seen) != 1 or len(seen_logits) != 1):
            print("  EXACT MODE BROKEN: the exact path gave more than one value")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
