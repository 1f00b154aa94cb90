"""The split-KV checks of tests/kernels/test_attention.py, run as a script so the Triton
kernels can run under the interpreter on a CPU (TRITON_INTERPRET must be set before
triton is imported): `python split_kv_checks.py CHECK [cpu|cuda]`, CHECK one of decode,
chunks, reversed, close, backward. Prints "ok ..." as its last line when the check holds.

cpu: the Triton interpreter, small heads, fp32 and fp16 (numpy's matmul stands in for
the MMA, so these check the reduction STRUCTURE: which keys, which splits, which merge
order; the instruction-level claim is the cuda run's). cuda: Qwen3-like heads, every dtype.
"""
import os
import random
import sys

DEV = sys.argv[2] if len(sys.argv) > 2 else "cpu"
if DEV == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from exact_kernels import attention as A  # noqa: E402
from exact_kernels.attention import _attn_finish, _attn_merge, _load_split, _tile_coords, _tile_rows  # noqa: E402
from exact_kernels.reference import paged_attention_ref, varlen_attention_ref  # noqa: E402

S = A._SPLIT
LENS = [1, S - 1, S, S + 1, 3 * S + 5]
HQ, HKV, D, PAGE = (4, 2, 32, 16) if DEV == "cpu" else (8, 2, 128, 16)
SCALE = D ** -0.5
DTYPES = (torch.float32, torch.float16) if DEV == "cpu" else (torch.float32, torch.bfloat16, torch.float16)
# Max |out - ref|, as TOL in test_attention.py.
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def cu(lens):
    return torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32, device=DEV)


def setup(dtype, seed=0):
    """q, k, v of LENS packed; every key also in a paged cache of shuffled blocks, NaN
    in the slots no sequence owns (a stray read shows)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(LENS), h, D, generator=g).to(dtype) for h in (HQ, HKV, HKV))
    per = [-(-n // PAGE) for n in LENS]
    perm = torch.randperm(sum(per) + 2, generator=g).tolist()
    table = torch.zeros(len(LENS), max(per), dtype=torch.int32)
    kc = torch.full((sum(per) + 2, PAGE, HKV, D), float("nan"), dtype=dtype)
    vc = kc.clone()
    start = [sum(LENS[:b]) for b in range(len(LENS))]
    for b, n in enumerate(LENS):
        table[b, :per[b]] = torch.tensor([perm.pop() for _ in range(per[b])])
        j = torch.arange(n)
        kc[table[b, j // PAGE].long(), j % PAGE] = k[start[b]:start[b] + n]
        vc[table[b, j // PAGE].long(), j % PAGE] = v[start[b]:start[b] + n]
    return tuple(t.to(DEV) for t in (q, k, v, kc, vc, table))


def prefill(q, k, v):
    return A._triton_fwd("t", q, k, v, cu(LENS), None, None, 1, max(LENS), SCALE, paged=False, want_lse=True)


def paged(q, kc, vc, table, q_lens, seq_lens, splits=None, tiles=None, want_lse=False):
    """One paged step; splits None: the rule paged_attention uses (kv_splits)."""
    if splits is None:
        splits = A.kv_splits(q, kc, table, max(q_lens))
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    return A._triton_fwd("t", q, kc, vc, cu(q_lens), sl, table, PAGE, max(q_lens), SCALE, paged=True,
                         want_lse=want_lse, tiles=tiles, splits=splits)


def picks():
    """(sequence, position) decode rows: each side of every split edge, first and last."""
    edges = [0, S - 2, S - 1, S, S + 1, 2 * S - 1, 2 * S, 3 * S, 3 * S + 4]
    return [(b, p) for b, n in enumerate(LENS) for p in sorted({e for e in edges if e < n} | {n - 1})]


def decode(q, kc, vc, table, rows, splits=None, want_lse=False):
    """Decode the picked rows as one batch: row (b, p) is sequence b at seq_len p + 1."""
    start = cu(LENS).tolist()
    qd = torch.stack([q[start[b] + p] for b, p in rows])
    return paged(qd, kc, vc, table[[b for b, _ in rows]], [1] * len(rows), [p + 1 for _, p in rows],
                 splits=splits, want_lse=want_lse)


def check_decode():
    """(a) split-parallel decode == serial prefill; (c) a row's bits alone, in the batch
    and in a shuffled batch; the serial decode kernel and lse agree too."""
    for dtype in DTYPES:
        q, k, v, kc, vc, table = setup(dtype)
        pre, pre_lse = prefill(q, k, v)
        rows = picks()
        at = [cu(LENS).tolist()[b] + p for b, p in rows]
        assert A.kv_splits(q[:len(rows)], kc, table, 1) >= 4, "decode must take the split-parallel kernel"
        split, lse = decode(q, kc, vc, table, rows, want_lse=True)
        assert torch.equal(split, pre[at]), (dtype, (split.float() - pre[at].float()).abs().max())
        assert torch.equal(lse, pre_lse[at]), dtype
        assert torch.equal(decode(q, kc, vc, table, rows, splits=0)[0], pre[at]), dtype
        order = list(range(len(rows)))
        random.Random(0).shuffle(order)
        shuffled = decode(q, kc, vc, table, [rows[i] for i in order])[0]
        assert torch.equal(shuffled, split[order]), dtype
        for i in (0, len(rows) // 2, len(rows) - 1):
            assert torch.equal(decode(q, kc, vc, table, [rows[i]])[0], split[i:i + 1]), (dtype, rows[i])
    print("ok")


def check_chunks():
    """(b) chunked prefill == prefill == decode: every sequence served in random chunks
    (1 token, a few, up to 2S) through the cache, each step by the serial kernel, the
    split-parallel kernel (forced: tiles straddle split edges) or split-parallel over a
    tile list, in turn."""
    for dtype in DTYPES:
        q, k, v, kc, vc, table = setup(dtype, seed=1)
        pre, _ = prefill(q, k, v)
        rng, start, done = random.Random(1), cu(LENS).tolist(), [0] * len(LENS)
        out = torch.full_like(q, float("nan"))
        forced = -(-table.shape[1] * PAGE // S)
        step = 0
        while any(d < n for d, n in zip(done, LENS)):
            batch = [b for b in range(len(LENS)) if done[b] < LENS[b]]
            q_lens = [min(LENS[b] - done[b], rng.choice([1, 3, 40, 100, 2 * S])) for b in batch]
            rows = torch.cat([torch.arange(start[b] + done[b], start[b] + done[b] + n)
                              for b, n in zip(batch, q_lens)]).to(DEV)
            tiles = None
            if step % 3 == 2:
                tok_m = A.paged_tile_rows(dtype, HQ, HKV, D)
                cap = sum(-(-n // tok_m) for n in q_lens) + 3  # a longer list than the step's tiles
                tiles = A.paged_tiles(torch.tensor(q_lens), tok_m, torch.empty(cap, dtype=torch.int32, device=DEV))
            res, _ = paged(q[rows].contiguous(), kc, vc, table[batch], q_lens,
                           [done[b] + n for b, n in zip(batch, q_lens)], splits=forced if step % 3 else 0, tiles=tiles)
            out[rows] = res
            done = [d + (q_lens[batch.index(b)] if b in batch else 0) for b, d in enumerate(done)]
            step += 1
        assert torch.equal(out, pre), (dtype, (out.float() - pre.float()).abs().max())
    print("ok")


@triton.jit
def _combine_reversed(O, LSE, M_S, L_S, ACC_S, CU_Q, SEQ_LENS, TILES, stride_ot, stride_oh, Hq, NUM_M, T,
                      G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr, BLOCK_M: tl.constexpr,
                      HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr, PAGED: tl.constexpr, WRITE_LSE: tl.constexpr,
                      SCHED: tl.constexpr):
    # `_attn_combine_kernel` with the splits merged last to first: the negative control.
    kvh = tl.program_id(1)
    b, pid_m = _tile_coords(TILES, NUM_M, SCHED)
    q_start, q_len, n, head, row_ok, pos, hi, q_rows = _tile_rows(CU_Q, SEQ_LENS, b, pid_m, kvh, PAGED, G, GP,
                                                                 TOK_M, BLOCK_M)
    last = tl.cdiv(hi, SPLIT) - 1
    m_i, l_i, acc = _load_split(M_S, L_S, ACC_S, last, T, q_rows, head, row_ok, Hq, HEAD_DIM)
    for i in range(1, last + 1):
        m_s, l_s, acc_s = _load_split(M_S, L_S, ACC_S, last - i, T, q_rows, head, row_ok, Hq, HEAD_DIM)
        m_i, l_i, acc = _attn_merge(m_i, l_i, acc, m_s, l_s, acc_s)
    _attn_finish(O, LSE, m_i, l_i, acc, q_rows, head, row_ok, stride_ot, stride_oh, Hq, HEAD_DIM, WRITE_LSE)


def check_reversed():
    """(e) the negative control: the decode comparison of check_decode, with the splits
    merged in reverse order, must see different bits (on rows of more than one split)."""
    q, k, v, kc, vc, table = setup(torch.float32)
    pre, _ = prefill(q, k, v)
    rows = picks()
    at = [cu(LENS).tolist()[b] + p for b, p in rows]
    assert torch.equal(decode(q, kc, vc, table, rows)[0], pre[at])
    A._attn_combine_kernel = _combine_reversed
    rev = decode(q, kc, vc, table, rows)[0]
    one = [i for i, (_, p) in enumerate(rows) if p < S]
    assert torch.equal(rev[one], pre[at][one]), "one split: nothing to reorder"
    assert not torch.equal(rev, pre[at]), "reversed merge order gave the same bits: the bitwise test is blind"
    print("ok", int((rev != pre[at]).sum()), "of", rev.numel(), "elements differ")


def check_close():
    """(d) split-parallel decode and serial prefill against the fp32 references."""
    for dtype in DTYPES:
        q, k, v, kc, vc, table = setup(dtype, seed=2)
        pre, _ = prefill(q, k, v)
        err = float((pre.float() - varlen_attention_ref(q, k, v, cu(LENS), SCALE)).abs().max())
        assert err <= TOL[dtype], (dtype, "prefill", err)
        rows = picks()
        start = cu(LENS).tolist()
        qd = torch.stack([q[start[b] + p] for b, p in rows])
        sl = torch.tensor([p + 1 for _, p in rows], dtype=torch.int32, device=DEV)
        ref = paged_attention_ref(qd, kc, vc, table[[b for b, _ in rows]], cu([1] * len(rows)), sl, SCALE)
        err = float((decode(q, kc, vc, table, rows)[0].float() - ref).abs().max())
        assert err <= TOL[dtype], (dtype, "decode", err)
    print("ok")


def check_backward():
    """The Triton backward on the merged lse (sequences of 1 to 3 splits), fp32,
    against the reference's gradients."""
    lens = [S + 1, 40, 2 * S + 3]
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(sum(lens), h, D, generator=g).to(DEV) for h in (HQ, HKV, HKV))
    do = torch.randn(q.shape, generator=g).to(DEV)
    c = cu(lens)
    out, lse = A._triton_fwd("t", q, k, v, c, None, None, 1, max(lens), SCALE, paged=False, want_lse=True)
    grads = A._triton_bwd(do, q, k, v, out, lse, c, max(lens), SCALE)
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    varlen_attention_ref(q32, k32, v32, c, SCALE).backward(do)
    for name, got, ref in zip(("dq", "dk", "dv"), grads, (q32.grad, k32.grad, v32.grad)):
        err = float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))
        assert err <= 1e-4, (name, err)
    print("ok")


globals()["check_" + sys.argv[1]]()
