"""Benchmark exact_kernels attention against torch SDPA (one table, one run).

CUDA (default): Qwen3-8B attention shapes (32 q heads, 8 kv heads, head_dim 128, bf16).
  * prefill: varlen_attention forward, and forward + backward, on packed sequences
    of up to 2048 tokens, vs SDPA (flash backend, is_causal, GQA through enable_gqa,
    or repeated kv if that backend refuses it) on the same sequences as a batch;
  * decode: paged_attention with q_len 1 on a shuffled block table (block_size 16)
    vs SDPA on the KV already gathered into [B, Hkv, ctx, D] (the gather is not timed).
    On CUDA "kernel" and "SDPA" are replayed from a CUDA graph (how the sampler's decode
    runs them: no Python launch in the time). Two rows per shape: the kernels alone
    split-parallel (as paged_attention picks, `kv_splits`: ctx / 256 splits and the
    combine) and serial (one program per sequence and kv head, the form decode ran
    before split-KV); same bits.
  "ours" is the public op (host-side validation included: it reads cu_seqlens /
  seq_lens / block table, one sync); "kernel" is the Triton launch alone. The ratio
  is kernel / SDPA. Median of triton.testing.do_bench.

--bwd-sweep (CUDA): the backward's tile configurations (BLOCK_M, BLOCK_N, warps, stages;
`attention._bwd_config`) on the trainer's shapes, Qwen3-0.6B heads (16 q, 8 kv, 128),
8192 tokens as 4 x 2048 and 16 x 512: fwd+bwd ms against SDPA's, and whether dq, dk, dv
are bitwise those of the current configuration. The forward is not touched (the
sampler/trainer parity is a forward property); the backward must stay deterministic.

CPU (--device cpu): a small table (4 q heads, 2 kv heads, head_dim 64) against SDPA's
CPU kernel; times are medians of repeated wall-clock runs.

--decode: the decode rows alone at B = 1, 8 and ctx 1k, 4k (the split-KV acceptance table),
with each form's device time per kernel (split kernel and combine apart); on CUDA also
two prefill rows (the serial kernel pays one merge per 256 keys) and the
registers / spills of every compiled forward kernel. --batches / --contexts pick other
decode cells, e.g. the sampler's large batches, which run the serial kernel (sequences x
kv heads fill the SMs): --decode --batches 64,256 --contexts 256,512.

Without CUDA, the default (cuda) run stops with a message; --device cpu runs the CPU table.

--split-stages (CUDA): the split-parallel kernel's pipelining depth at the --decode shapes
under graphs, each depth's output checked against the serial kernel with torch.equal.

Run: python benchmarks/bench_attention.py [--device cpu] [--decode] [--split-stages]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from exact_kernels import attention as A
from exact_kernels import paged_attention, varlen_attention


def _bench(fn, device, grad_to_none=None) -> float:
    if device == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _bench_graph(fn) -> float:
    """Median ms of fn replayed from a CUDA graph: the kernel's time as the sampler's
    decode graphs see it, without the Python launch (tens of microseconds, more than a
    decode kernel at batch 1 takes)."""
    import triton

    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def _kernel_us(fn, n: int = 20) -> dict[str, float]:
    """Device microseconds per call of each CUDA kernel fn launches (torch.profiler over n
    eager calls): which of a launch's kernels the time goes to (split kernel or combine)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.self_device_time_total / n for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0}


def _sdpa(q, k, v, causal):
    """q [B, Hq, S, D], k/v [B, Hkv, L, D]; flash backend on CUDA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION] if q.is_cuda else [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]
    group = q.shape[1] // k.shape[1]
    try:
        with sdpa_kernel(backends):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

        def run():
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return run, "gqa"
    except RuntimeError:
        kr = k.repeat_interleave(group, 1).detach().requires_grad_(k.requires_grad)
        vr = v.repeat_interleave(group, 1).detach().requires_grad_(v.requires_grad)

        def run():
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
        return run, "rep-kv"


def prefill_rows(device, hq, hkv, d, dtype, totals, seq):
    rows = []
    for total in totals:
        s = min(total, seq)
        B = total // s
        cu = torch.arange(0, total + 1, s, dtype=torch.int32, device=device)
        q = torch.randn(total, hq, d, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(total, hkv, d, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(total, hkv, d, device=device, dtype=dtype, requires_grad=True)
        dout = torch.randn(total, hq, d, device=device, dtype=dtype)
        scale = d ** -0.5
        qs, ks, vs = (t.detach().view(B, s, -1, d).transpose(1, 2).requires_grad_() for t in (q, k, v))
        sdpa, how = _sdpa(qs, ks, vs, causal=True)
        dout_s = dout.view(B, s, hq, d).transpose(1, 2)
        with torch.no_grad():
            ours = _bench(lambda: varlen_attention(q, k, v, cu, s, scale), device)
            kern = ours if device == "cpu" else _bench(
                lambda: A._triton_fwd("bench", q, k, v, cu, None, None, 1, s, scale, paged=False, want_lse=True),
                device)
            ref = _bench(sdpa, device)
        rows.append((f"prefill fwd T={total} ({B}x{s})", ours, kern, ref, how))
        if device == "cuda":
            ours_b = _bench(lambda: varlen_attention(q, k, v, cu, s, scale).backward(dout), device, [q, k, v])
            ref_b = _bench(lambda: sdpa().backward(dout_s), device, [qs, ks, vs])
            rows.append((f"prefill fwd+bwd T={total} ({B}x{s})", ours_b, ours_b, ref_b, how))
    return rows


def _decode_inputs(device, hq, hkv, d, dtype, B, ctx, bs, gen):
    """One decode step: q [B, Hq, D], a paged cache of shuffled blocks, and SDPA on the
    same keys gathered to [B, Hkv, ctx, D] (the gather is not timed)."""
    nblk = (ctx + bs - 1) // bs
    num_blocks = B * nblk
    k_cache = torch.randn(num_blocks, bs, hkv, d, device=device, dtype=dtype)
    v_cache = torch.randn(num_blocks, bs, hkv, d, device=device, dtype=dtype)
    table = torch.randperm(num_blocks, generator=gen).view(B, nblk).to(torch.int32).to(device)
    seq_lens = torch.full((B,), ctx, dtype=torch.int32, device=device)
    cu = torch.arange(B + 1, dtype=torch.int32, device=device)
    q = torch.randn(B, hq, d, device=device, dtype=dtype)
    kg = k_cache[table.long()].view(B, nblk * bs, hkv, d)[:, :ctx].transpose(1, 2).contiguous()
    vg = v_cache[table.long()].view(B, nblk * bs, hkv, d)[:, :ctx].transpose(1, 2).contiguous()
    sdpa, how = _sdpa(q.view(B, hq, 1, d), kg, vg, causal=False)
    return q, k_cache, v_cache, table, seq_lens, cu, sdpa, how


def decode_rows(device, hq, hkv, d, dtype, batches, contexts, bs=16, breakdown=None):
    """Table rows per (B, ctx); on CUDA, with a `breakdown` list, also one line per
    kernel form (split-parallel, serial): device µs per kernel it launches (split
    kernel and combine apart), eager calls."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for B in batches:
        for ctx in contexts:
            q, k_cache, v_cache, table, seq_lens, cu, sdpa, how = _decode_inputs(device, hq, hkv, d, dtype, B, ctx,
                                                                                 bs, gen)
            scale = d ** -0.5
            ours = _bench(lambda: paged_attention(q, k_cache, v_cache, table, cu, seq_lens, scale), device)
            if device == "cpu":
                rows.append((f"decode B={B} ctx={ctx}", ours, ours, _bench(sdpa, device), how))
                continue
            ref = _bench_graph(sdpa)
            # The kernel alone, in both forms (same bits): split-parallel as paged_attention
            # picks it (kv_splits), and the serial kernel that decode ran before splits.
            for splits in dict.fromkeys((A.kv_splits(q, k_cache, table, 1), 0)):
                def launch(splits=splits):
                    return A._triton_fwd("bench", q, k_cache, v_cache, cu, seq_lens, table, bs, 1, scale,
                                         paged=True, want_lse=False, splits=splits)
                kern = _bench_graph(launch)
                form = f"{splits} splits" if splits else "serial"
                rows.append((f"decode B={B} ctx={ctx} {form}", ours, kern, ref, how))
                if breakdown is not None:
                    us = _kernel_us(launch)
                    breakdown.append(f"B={B} ctx={ctx} {form}: " + ", ".join(
                        f"{name[:40]} {t:.1f} us" for name, t in sorted(us.items(), key=lambda kv: -kv[1])))
    return rows


def split_stages_sweep(hq=32, hkv=8, d=128, dtype=torch.bfloat16, bs=16, stages=(1, 2, 3, 4, 5)) -> None:
    """The split-parallel kernel's pipelining depth (`_fwd_config`'s split_stages) at the
    decode acceptance shapes, under CUDA graphs, each checked bit for bit (torch.equal)
    against the serial kernel (the bits must not depend on it)."""
    from triton.errors import TritonError

    current = A._fwd_config
    print(f"split-parallel decode, split_stages sweep, Hq={hq}, Hkv={hkv}, D={d}, {dtype}; "
          f"current {current(dtype, d)['split_stages']}")
    print(f"| {'case':<22} | {'SDPA ms':>8} | " + " | ".join(f"{'st ' + str(st):>12}" for st in stages) + " |")
    gen = torch.Generator().manual_seed(0)
    for B, ctx in ((1, 1024), (1, 4096), (8, 1024), (8, 4096)):
        q, kc, vc, table, seq_lens, cu, sdpa, _ = _decode_inputs("cuda", hq, hkv, d, dtype, B, ctx, bs, gen)
        splits = A.kv_splits(q, kc, table, 1)

        def run(n):
            return A._triton_fwd("bench", q, kc, vc, cu, seq_lens, table, bs, 1, d ** -0.5, paged=True,
                                 want_lse=True, splits=n)
        serial = run(0)
        ref = _bench_graph(sdpa)
        cells = []
        try:
            for st in stages:
                A._fwd_config = lambda dt, hd, st=st: {**current(dt, hd), "split_stages": st}
                try:
                    out = run(splits)
                    same = all(torch.equal(a, b) for a, b in zip(out, serial))
                    ms = _bench_graph(lambda: run(splits))
                except (RuntimeError, TritonError) as e:
                    cells.append(f"{type(e).__name__[:12]:>12}")
                    continue
                cells.append(f"{ms / ref:5.2f}x {'same' if same else 'DIFF':>4}")
        finally:
            A._fwd_config = current
        print(f"| {f'B={B} ctx={ctx} ({splits} sp)':<22} | {ref:8.4f} | " + " | ".join(cells) + " |")


BWD_CONFIGS = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st)
               for m in (32, 64, 128) for n in (32, 64, 128) for w in (4, 8) for st in (1, 2, 3)]


def bwd_sweep(hq=16, hkv=8, d=128, dtype=torch.bfloat16, total=8192, seqs=(2048, 512)) -> None:
    """Print the fastest backward configurations per layout (module docstring)."""
    from triton.errors import TritonError  # OutOfResources, CompilationError

    current = A._bwd_config
    print(f"attention backward sweep, Hq={hq}, Hkv={hkv}, D={d}, {dtype}, on {torch.cuda.get_device_name()}; "
          f"current: {current(dtype, d, 2048)} (sequences <= 512: {current(dtype, d, 512)})")
    for s in seqs:
        B = total // s
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(total, h, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
                   for h in (hq, hkv, hkv))
        dout = torch.randn(total, hq, d, device="cuda", dtype=dtype, generator=g)
        cu = torch.arange(0, total + 1, s, dtype=torch.int32, device="cuda")
        qs, ks, vs = (t.detach().view(B, s, -1, d).transpose(1, 2).requires_grad_() for t in (q, k, v))
        sdpa, _ = _sdpa(qs, ks, vs, causal=True)
        ref_ms = _bench(lambda: sdpa().backward(dout.view(B, s, hq, d).transpose(1, 2)), "cuda", [qs, ks, vs])

        def grads():
            q.grad = k.grad = v.grad = None
            varlen_attention(q, k, v, cu, s, d ** -0.5).backward(dout)
            return q.grad.clone(), k.grad.clone(), v.grad.clone()
        base = grads()
        rows = []
        try:
            for cfg in BWD_CONFIGS:
                A._bwd_config = lambda dtype_, head_dim, max_seqlen, c=cfg: c
                try:
                    same = all(torch.equal(a, b) for a, b in zip(grads(), base))
                    ms = _bench(lambda: varlen_attention(q, k, v, cu, s, d ** -0.5).backward(dout), "cuda", [q, k, v])
                except (RuntimeError, TritonError) as e:  # e.g. a tile needing more shared memory than an SM
                    rows.append((cfg, float("inf"), False, type(e).__name__))
                    continue
                rows.append((cfg, ms, same, ""))
        finally:
            A._bwd_config = current
        rows.sort(key=lambda r: r[1])
        now = next(r for r in rows if r[0] == current(dtype, d, s))
        print(f"\n{B} x {s} tokens: SDPA fwd+bwd {ref_ms:.3f} ms; current {now[1]:.3f} ms "
              f"({now[1] / ref_ms:.2f}x)")
        print(f"| {'BLOCK_M':>7} | {'BLOCK_N':>7} | {'warps':>5} | {'stages':>6} | {'fwd+bwd ms':>10} | "
              f"{'/ SDPA':>7} | same grads as current |")
        for cfg, ms, same, err in rows[:10]:
            print(f"| {cfg['BLOCK_M']:>7} | {cfg['BLOCK_N']:>7} | {cfg['num_warps']:>5} | {cfg['num_stages']:>6} | "
                  f"{ms:10.3f} | {ms / ref_ms:6.2f}x | {err or ('yes' if same else 'no')} |")
        failed = [r for r in rows if r[3]]
        if failed:
            print(f"({len(failed)} configurations did not run: {sorted({r[3] for r in failed})})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--bwd-sweep", action="store_true", help="CUDA: the backward's tile configurations "
                    "(module docstring)")
    ap.add_argument("--split-stages", action="store_true", help="CUDA: the split-parallel decode kernel's "
                    "pipelining depth against SDPA under graphs, each checked bitwise against the serial kernel")
    ap.add_argument("--decode", action="store_true", help="decode rows only (B = 1, 8; ctx 1k, 4k): the "
                    "split-parallel and the serial kernel against SDPA")
    ap.add_argument("--batches", default="1,8", help="--decode: batch sizes (comma-separated)")
    ap.add_argument("--contexts", default="1024,4096", help="--decode: context lengths (comma-separated)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --device cpu (the Triton kernels need a GPU)")
    if args.decode:
        hq, hkv, d, dtype = (32, 8, 128, torch.bfloat16) if args.device == "cuda" else (4, 2, 64, torch.float32)
        breakdown = [] if args.device == "cuda" else None
        rows = decode_rows(args.device, hq, hkv, d, dtype, [int(b) for b in args.batches.split(",")],
                           [int(c) for c in args.contexts.split(",")], breakdown=breakdown)
        _print_table(f"decode (Hq={hq}, Hkv={hkv}, D={d}, {dtype}) on {args.device}", rows)
        if breakdown:
            print("device time per kernel (torch.profiler, eager calls):")
            print("\n".join(f"  {line}" for line in breakdown))
        if args.device == "cuda":
            rows = prefill_rows("cuda", hq, hkv, d, dtype, [2048, 8192], seq=2048)
            _print_table("prefill (the serial kernel, SPLIT-key splits merged in registers)", rows)
            _print_registers()
        return
    if args.split_stages:
        if args.device != "cuda":
            ap.error("--split-stages needs CUDA")
        split_stages_sweep()
        return
    if args.bwd_sweep:
        if args.device != "cuda" or not torch.cuda.is_available():
            ap.error("--bwd-sweep needs CUDA")
        bwd_sweep()
        return
    if args.device == "cuda":
        dtype, hq, hkv, d = torch.bfloat16, 32, 8, 128
        rows = prefill_rows("cuda", hq, hkv, d, dtype, [128, 512, 2048, 8192], seq=2048)
        rows += decode_rows("cuda", hq, hkv, d, dtype, [1, 8, 32, 128], [1024, 4096])
        title = f"Qwen3-8B attention (Hq={hq}, Hkv={hkv}, D={d}, bf16) on {torch.cuda.get_device_name()}"
    else:
        dtype, hq, hkv, d = torch.float32, 4, 2, 64
        rows = prefill_rows("cpu", hq, hkv, d, dtype, [128, 512], seq=512)
        rows += decode_rows("cpu", hq, hkv, d, dtype, [1, 8], [512])
        title = f"CPU attention (Hq={hq}, Hkv={hkv}, D={d}, fp32), {torch.get_num_threads()} threads"
    _print_table(title, rows)


def _print_registers() -> None:
    """Registers, spills and shared memory of every compiled forward variant (split-KV
    keeps a second fp32 accumulator live in the serial kernel: a spill shows here)."""
    for fn in (A._attn_fwd_kernel, A._attn_fwd_split_kernel, A._attn_combine_kernel):
        for cache in fn.device_caches.values():
            for kernel in cache[0].values():  # the compiled variants (dtype, PAGED, ... differ)
                kernel._init_handles()
                print(f"{fn.fn.__name__}: {kernel.n_regs} registers, {kernel.n_spills} spilled, "
                      f"{kernel.metadata.shared} B shared, {kernel.metadata.num_warps} warps")


def _print_table(title, rows) -> None:
    print(title)
    print(f"| {'case':<34} | {'ours ms':>9} | {'kernel ms':>9} | {'SDPA ms':>9} | {'kernel/SDPA':>11} | SDPA GQA |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 13}|----------|")
    for name, ours, kern, ref, how in rows:
        print(f"| {name:<34} | {ours:9.3f} | {kern:9.3f} | {ref:9.3f} | {kern / ref:10.2f}x | {how:<8} |")


if __name__ == "__main__":
    main()
