"""Benchmark the batch-invariant matmul against the vendor library.

CUDA (default): Qwen3-8B layer shapes (bf16), x [M, K] @ W[N, K]^T, for
M in 1, 8, 32, 128, 512, 2048, 8192. Time = triton.testing.do_bench median (the op
as called, Python launch included) and, in `graph`, do_bench_cudagraph median (kernel
time without launch overhead, how vLLM runs decode). Ratio = ours / cuBLAS
(torch.nn.functional.linear, TF32 off); `sum` rows give the ratio of the summed times
over the five shapes at each M, beside the reference batch-invariant kernel's ratio
(docs/design.md) and the target (summed ratio <= 1.3 at every M).

CPU (`--device cpu`): a few small shapes vs torch.mm fp32 (a speed baseline only:
torch.mm on CPU is not batch invariant).

`--sweep OUT.json` (CUDA): the tuning experiment: which launch configurations give
bit-identical results (same input, all configs), and the time of each candidate per
layer shape and M. `--quick`: fewer shapes and M.

    python benchmarks/bench_matmul.py [--quick] [--device cpu] [--sweep out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

SHAPES = {  # name: (N, K)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (24576, 4096),
    "down": (4096, 12288),
    "lm_head": (151936, 4096),
}
MS = [1, 8, 32, 128, 512, 2048, 8192]
REFERENCE_RATIO = {1: 2.41, 8: 2.41, 32: 2.06, 128: 1.19, 512: 1.42, 2048: 1.22, 8192: 1.30}
TARGET = 1.3


def _cuda_times(fn):
    import triton.testing as tt

    t = tt.do_bench(fn, warmup=10, rep=40, return_mode="median")
    g = tt.do_bench_cudagraph(fn, rep=40, return_mode="median")
    return t * 1e3, g * 1e3  # microseconds


def bench_cuda(quick: bool) -> None:
    from exact_kernels.matmul import mm_forward

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    shapes = {k: SHAPES[k] for k in (["o", "gate_up"] if quick else SHAPES)}
    ms = [1, 128, 2048] if quick else MS
    gen = torch.Generator(device="cuda").manual_seed(0)
    weights = {k: torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=gen) for k, (N, K) in shapes.items()}
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, x[M,K] @ W[N,K]^T")
    print(f"{'M':>5} {'shape':>8} {'N':>7} {'K':>6} | {'ours_us':>9} {'cublas_us':>9} {'ratio':>6} |"
          f" {'graph_ours':>10} {'graph_cublas':>12} {'g_ratio':>7}")
    summary = []
    for M in ms:
        tot = [0.0, 0.0, 0.0, 0.0]
        for name, (N, K) in shapes.items():
            w = weights[name]
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            ours, ours_g = _cuda_times(lambda: mm_forward(x, w.t()))
            ref, ref_g = _cuda_times(lambda: torch.nn.functional.linear(x, w))
            for i, v in enumerate((ours, ref, ours_g, ref_g)):
                tot[i] += v
            print(f"{M:>5} {name:>8} {N:>7} {K:>6} | {ours:>9.1f} {ref:>9.1f} {ours / ref:>6.2f} |"
                  f" {ours_g:>10.1f} {ref_g:>12.1f} {ours_g / ref_g:>7.2f}", flush=True)
        r, rg = tot[0] / tot[1], tot[2] / tot[3]
        summary.append((M, r, rg))
        print(f"{M:>5} {'sum':>8} {'':>7} {'':>6} | {tot[0]:>9.1f} {tot[1]:>9.1f} {r:>6.2f} |"
              f" {tot[2]:>10.1f} {tot[3]:>12.1f} {rg:>7.2f}   reference {REFERENCE_RATIO[M]:.2f}", flush=True)
    print(f"\nbar: summed ratio <= {TARGET} at every M, and below the reference kernel's ratio")
    print(f"{'M':>5} {'ratio':>6} {'graph':>6} {'reference':>9}  verdict (do_bench / graph)")
    def ok(m: int, ratio: float) -> str:
        return "ok" if ratio <= TARGET and ratio < REFERENCE_RATIO[m] else "MISS"

    for M, r, rg in summary:
        print(f"{M:>5} {r:>6.2f} {rg:>6.2f} {REFERENCE_RATIO[M]:>9.2f}  {ok(M, r)} / {ok(M, rg)}")


def bench_cpu(quick: bool) -> None:
    from exact_kernels.matmul import mm_forward

    cases = [(256, 1024, 1024), (1, 1024, 1024), (64, 512, 1536), (2048, 256, 256)]
    if quick:
        cases = cases[:2]
    print(f"CPU, {torch.get_num_threads()} threads; ratio = ours / torch.mm fp32 (not batch invariant)")
    print(f"{'M':>5} {'K':>5} {'N':>5} | {'torch_f32_ms':>12} {'ours_f32_ms':>11} {'ratio':>6} |"
          f" {'ours_bf16_ms':>12} {'ratio':>6}")

    def t(fn, reps=7):
        fn()
        out = []
        for _ in range(reps):
            s = time.perf_counter()
            fn()
            out.append(time.perf_counter() - s)
        return statistics.median(out) * 1e3

    for M, K, N in cases:
        a, b = torch.randn(M, K), torch.randn(K, N)
        ab, bb = a.bfloat16(), b.bfloat16()
        ref = t(lambda: torch.mm(a, b))
        ours = t(lambda: mm_forward(a, b))
        ours16 = t(lambda: mm_forward(ab, bb))
        print(f"{M:>5} {K:>5} {N:>5} | {ref:>12.3f} {ours:>11.3f} {ours / ref:>6.2f} |"
              f" {ours16:>12.3f} {ours16 / ref:>6.2f}")


def overhead() -> None:
    """Host time per call, us (GPU work tiny, so the Python + launch path is the time)."""
    from exact_kernels.matmul import _config, _mm_cuda, _mm_kernel, mm_forward
    import triton

    def per_call(fn, n=3000):
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        torch.cuda.synchronize()
        return dt / n * 1e6

    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
    wt, out = w.t(), torch.empty(1, 512, device="cuda", dtype=torch.bfloat16)
    cfg = _config(1, 512, 512, torch.bfloat16)

    def triton_call():  # Triton's ordinary launch path, nothing of ours
        _mm_kernel[(triton.cdiv(512, cfg.block_n), 1)](
            x, wt, out, out, 1, 512, 512, 0, 512, 1, 0, 1, 512, 0, 512, 1, 0, 0, 1.0, 0.0, False, False, False,
            cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    rows = {"torch.nn.functional.linear": lambda: torch.nn.functional.linear(x, w),
            "torch.empty (alloc only)": lambda: torch.empty(1, 512, device="cuda", dtype=torch.bfloat16),
            "triton kernel[grid](...)": triton_call,
            "mm_forward (ours)": lambda: mm_forward(x, wt)}
    try:
        from exact_kernels.matmul import MMConfig
        tcfg = MMConfig(64, 64, 64, 4, 3, tma=True)
        xa = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
        rows["_mm_cuda TMA config"] = lambda: _mm_cuda(xa, wt, None, 0.0, 1.0, tcfg)
    except Exception as e:  # noqa: BLE001 - a GPU without TMA: the other rows still print
        print("tma setup", _err(e))
    print(f"host time per call (us), {torch.cuda.get_device_name()}")
    for k, fn in rows.items():
        try:
            print(f"  {k:>28}: {per_call(fn):7.1f}", flush=True)
        except Exception as e:  # noqa: BLE001 - a failing row prints its error, the others still run
            print(f"  {k:>28}: {_err(e)}", flush=True)


# ---------------------------------------------------------------------------- tuning sweep

CANDIDATES = {  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages[, tma[, persistent]])
    "small": [(16, 32, 256, 4, 4), (16, 32, 128, 4, 6), (16, 64, 128, 4, 5), (16, 64, 256, 4, 3),
              (16, 128, 128, 4, 4), (16, 64, 64, 4, 8), (16, 32, 64, 4, 8), (16, 128, 64, 4, 6)],
    "mid": [(32, 64, 128, 4, 4), (32, 64, 256, 4, 3), (32, 128, 128, 4, 4), (32, 32, 256, 4, 4),
            (32, 64, 64, 4, 6), (32, 128, 64, 4, 5), (16, 64, 128, 4, 5)],
    "m128": [(64, 64, 128, 4, 4), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (128, 64, 64, 4, 4),
             (128, 128, 64, 8, 3), (64, 256, 64, 4, 4), (64, 64, 64, 4, 6)],
    # M 33-128 is bandwidth bound: a weight of N = 4096 in 64-wide tiles is 64 programs on
    # 132 SMs. Narrower tiles (more programs) and TMA loads at BLOCK_M 64.
    "thin": [(64, 32, 128, 4, 4), (64, 32, 256, 4, 3), (64, 16, 256, 4, 4), (64, 32, 64, 4, 8),
             (64, 64, 256, 4, 3), (32, 32, 256, 4, 4), (128, 32, 128, 4, 4), (64, 16, 128, 4, 6),
             (64, 32, 128, 4, 5, True), (64, 64, 128, 4, 4, True), (64, 128, 64, 4, 4, True),
             (128, 64, 64, 4, 4, True)],
    "tma": [(128, 256, 64, 8, 3, True), (128, 256, 64, 8, 4, True), (256, 128, 64, 8, 3, True),
            (128, 128, 64, 8, 4, True), (128, 128, 64, 4, 4, True), (128, 256, 64, 8, 3, True, True),
            (128, 128, 64, 8, 4, True, True), (256, 128, 64, 8, 3, True, True), (128, 128, 128, 8, 3, True, True),
            (128, 256, 64, 8, 4, True, True), (128, 128, 64, 4, 5, True)],
    "large": [(128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (256, 128, 64, 8, 3),
              (128, 256, 64, 8, 4), (128, 128, 128, 8, 3), (128, 256, 64, 4, 3), (128, 128, 64, 4, 5)],
}
# M 129-512 also times "thin": at M = 256 a weight of N = 4096 in 128 x 128 tiles is 64
# programs on 132 SMs (o and down were 1.39x and 1.31x cuBLAS on the H200 with those).
GROUPS_FOR_M = ((16, ["small"]), (32, ["mid", "small"]), (128, ["thin", "m128", "mid", "tma"]),
                (512, ["large", "m128", "tma", "thin"]), (1 << 62, ["large", "tma"]))  # (largest M, groups)


def groups_for(m: int) -> list[str]:
    """The candidate groups timed at M (any M: the first bucket that holds it)."""
    return next(g for max_m, g in GROUPS_FOR_M if m <= max_m)


def _mmconfig(c: tuple):
    from exact_kernels.matmul import MMConfig

    bm, bn, bk, w, st, *rest = c
    return MMConfig(bm, bn, bk, w, st, tma=bool(rest and rest[0]), persistent=bool(len(rest) > 1 and rest[1]))


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"


def sweep(path: str, quick: bool, groups: list[str], ms: list[int], bits_groups: list[str]) -> None:
    import triton.testing as tt

    from exact_kernels.matmul import _launch_cuda

    result = {"bits": {}, "times": {}}

    def save():
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    all_cfgs = sorted({c for g in bits_groups for c in CANDIDATES[g]}, key=str)
    sweep_groups = groups
    gen = torch.Generator(device="cuda").manual_seed(0)
    # 1. Bit equality across every candidate, same input (incl. K tails, fp16, layouts).
    for dtype, N, K in [(torch.bfloat16, 4096, 4096), (torch.bfloat16, 1000, 4000), (torch.float16, 4096, 4096)]:
        a = torch.randn(1, 300, K, device="cuda", dtype=dtype, generator=gen)
        w = torch.randn(1, N, K, device="cuda", dtype=dtype, generator=gen)
        classes: dict[str, list] = {}
        outs = {}
        for c in all_cfgs:
            try:
                o = _launch_cuda(a, w.transpose(1, 2), None, 0.0, 1.0, config=_mmconfig(c))
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - an experiment: record, print and go on
                print(f"    error {c}: {_err(e)}", flush=True)
                classes.setdefault("error:" + type(e).__name__, []).append(c)
                continue
            key = None
            for k2, o2 in outs.items():
                if torch.equal(o, o2):
                    key = k2
                    break
            if key is None:
                key = str(c)
                outs[key] = o
            classes.setdefault(key, []).append(c)
        c0 = next((c for c in all_cfgs if str(c) in outs), None)
        lay = None if c0 is None else _launch_cuda(a, w.transpose(1, 2).contiguous(), None, 0.0, 1.0,
                                                   config=_mmconfig(c0))
        tag = f"{dtype}-N{N}-K{K}"
        result["bits"][tag] = {"classes": len(outs), "groups": {k: v for k, v in classes.items()},
                               "layout_equal": bool(lay is not None and torch.equal(lay, outs[str(c0)]))}
        print("bits", tag, "classes:", len(outs), "layout_equal:", result["bits"][tag]["layout_equal"], flush=True)
        for k, v in classes.items():
            print("   ", k, "<-", len(v), "configs", v if len(v) < 6 else v[:6], flush=True)
        save()
    # 2. Timing of candidates per shape and M (CUDA graphs: kernel time).
    shapes = {k: SHAPES[k] for k in (["o", "gate_up"] if quick else SHAPES)}
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, (N, K) in shapes.items():
        w = torch.randn(1, N, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        wt = w.transpose(1, 2)
        for M in ms:
            x = torch.randn(1, M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            row = {"cublas": tt.do_bench_cudagraph(lambda: torch.nn.functional.linear(x[0], w[0]), rep=15,
                                                   return_mode="median") * 1e3}
            for g in [g for g in groups_for(M) if g in sweep_groups]:
                for c in CANDIDATES[g]:
                    cfg = _mmconfig(c)
                    try:
                        row[str(c)] = tt.do_bench_cudagraph(
                            lambda: _launch_cuda(x, wt, None, 0.0, 1.0, config=cfg), rep=15,
                            return_mode="median") * 1e3
                    except Exception as e:  # noqa: BLE001 - a config that fails to launch is a recorded result
                        row[str(c)] = _err(e)
                        print(f"    error {name} M={M} {c}: {row[str(c)]}", flush=True)
            best = min([(v, k) for k, v in row.items() if k != "cublas" and isinstance(v, float)]
                       or [(float("nan"), "-")])
            result["times"][f"{name}-M{M}"] = row
            print(f"time {name:>8} M={M:>5} cublas {row['cublas']:8.1f}us best {best[0]:8.1f}us "
                  f"({best[0] / row['cublas']:.2f}x) {best[1]}", flush=True)
            save()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="fewer shapes and M")
    p.add_argument("--sweep", metavar="OUT_JSON", help="CUDA tuning experiment instead of the table")
    p.add_argument("--groups", default=",".join(CANDIDATES), help="sweep: candidate groups")
    p.add_argument("--ms", default=",".join(map(str, MS)), help="sweep: M values")
    p.add_argument("--bits-groups", default=",".join(CANDIDATES), help="sweep: groups in the bit-equality check")
    p.add_argument("--overhead", action="store_true", help="host time per call (small shape, CUDA)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: use --device cpu")
    if args.sweep:
        sweep(args.sweep, args.quick, args.groups.split(","), [int(m) for m in args.ms.split(",")],
              [g for g in args.bits_groups.split(",") if g])
    elif args.overhead:
        overhead()
    elif args.device == "cuda":
        bench_cuda(args.quick)
    else:
        bench_cpu(args.quick)


if __name__ == "__main__":
    main()
