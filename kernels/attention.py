"""Batch-invariant causal GQA attention: packed-varlen prefill (with a deterministic
backward), paged attention over a vLLM-layout KV cache, and the cache write.

Math (per query row i of a sequence, query head h, kv head h // (Hq // Hkv)):

    s_ij = scale * <q_i, k_j>,  j = 0 .. pos_i   (causal: keys at or before the row)
    out_i = sum_j softmax(s_i)_j v_j

fp32 scores, softmax and accumulation; the output is rounded once to the input dtype.
`pos_i` is the row's position inside its own sequence: in `varlen_attention` the
i-th token of the sequence; in `paged_attention` the queries of sequence b are its
last q_len_b tokens, so pos = seq_len_b - q_len_b + i (decode: q_len 1; chunked
prefill / extend: q_len > 1).

The contract (docs/design.md, "One attention algorithm"): a query row gets the same bits
from `varlen_attention` and from `paged_attention`, whatever the batch, block table
or chunking. Both reduce over keys in the same order:

CUDA (Triton): ONE per-split body, `_attn_split`, and ONE merge, `_attn_merge`, run by
every forward launch; a constexpr PAGED flag changes only how K/V addresses are formed
(packed offset vs block-table gather). Every launch uses the same BLOCK_M / BLOCK_N /
SPLIT / num_warps / num_stages (`_fwd_config`, chosen from dtype and head_dim only), so
the MMA instructions and the register layouts (which decide the tree order of tl.max /
tl.sum) are the same.
  * Split-KV with a FIXED split size (_SPLIT = 256 keys, a multiple of BLOCK_N): a
    row's keys 0 .. pos are cut at the absolute positions 0, SPLIT, 2 * SPLIT, ...;
    each split is an online softmax from a fresh state (m = -inf, l = 0, acc = 0), and
    the splits are merged into a running state in split order 0, 1, 2, ..., split 0
    being the running state itself (so a sequence of <= SPLIT keys gets the bits of
    the unsplit kernel). The split size depends on nothing (not the batch, the query
    length or the form below), so the reduction tree of a row is fixed by its length.
  * Two forms of the same computation. Serial (`_attn_fwd_kernel`; varlen prefill and
    paged prefill / chunks): one program per (query tile, kv head) walks the splits and
    merges them in registers. Split-parallel (`_attn_fwd_split_kernel` then
    `_attn_combine_kernel`; paged steps whose sequences each fit one query tile, i.e.
    decode, see `kv_splits`): one program per (query tile, kv head, split) writes the
    split's fp32 (m, l, acc) to a scratch buffer, and the combine merges them in split
    order with the same `_attn_merge`. fp32 through memory is exact, so the forms give
    the same bits; the choice is speed only (decode at batch 1 had B x Hkv programs).
    The scratch is sized from host-known shapes (tokens x heads x the block table's
    width / SPLIT), no device read, so a CUDA graph can capture it.
  * A program owns one kv head of one sequence and a tile of BLOCK_M query rows:
    TOK_M = BLOCK_M // GP tokens x GP heads of the GQA group (GP = next power of two
    of the group size; pad rows are independent rows whose results are dropped). So
    decode (one token) still fills GP rows of the tile.
  * KV tiles of BLOCK_N keys start at key 0 of the sequence (never a packed-buffer
    offset); online softmax in base 2, updated tile by tile in key order within a split.
  * A row's last tiles may be fully masked (the tile's other rows reach further):
    those updates are exact no-ops (max unchanged, alpha = exp2(0) = 1, p = 0), so the
    number of tiles a row visits does not change its bits. Likewise a whole split the
    row does not see (its tile reaches further): inside it the row's max stays -inf
    (subtracting 0 keeps p = alpha = 0, not NaN), and merging it is exact (a = 1,
    c = exp2(-inf) = 0), so a decode row (1-token tile) and the same row in a 16-token
    prefill tile merge different numbers of splits and agree.

CPU (C++, csrc/attention.cpp): one templated routine per query row with a key
accessor (packed or paged): scores over head_dim in a fixed 8-lane order, then an
exact two-pass softmax and the weighted sum in key order 0..pos. OpenMP over rows. No
splits: one thread per row has no idle hardware to fill, and CPU never equals GPU.

Backward (varlen only; the sampler never differentiates):
  CUDA: FA2-style, no atomics. `_attn_bwd_dkdv_kernel`: one program per (KV tile,
  kv head, sequence) loops over query tiles in order; the GQA group's heads are rows
  of the same query tile, so their contributions are summed inside the tile's
  tl.dot in a fixed order. `_attn_bwd_dq_kernel`: one program per query tile loops
  over KV tiles from key 0. delta = rowsum(O * dO) by `_attn_bwd_delta_kernel`.
  CPU: C++ (same file): dq per query row over keys 0..i; dk/dv per key row over the
  group's heads in order, then rows i >= j. We chose C++ over a torch-math
  recompute because torch's CPU matmul gives no fixed reduction order (MKL/oneDNN
  choose kernels by shape and thread count), and C++ states the order outright.
  Gradients are deterministic run to run; they are not claimed batch-invariant
  (GPU tile packing does not change a row's arithmetic, but nothing tests it).

Departures from FlashAttention-2 / flash-decoding: the split size is fixed (flash-
decoding picks the number of splits from the batch, which changes the bits), prefill
splits and merges too (one extra accumulator and one merge per SPLIT keys), one tile
config for prefill and decode (decode wastes the pad rows of its tile), the GQA group
packed into the query tile. Inputs are validated on the host (values of cu_seqlens / seq_lens /
block table are read, i.e. one device sync per call).

Run the tests: python -m pytest tests/kernels/test_attention.py -q
Benchmark:     python benchmarks/bench_attention.py [--device cpu]
"""
from __future__ import annotations


import torch

from ._checks import check, check_float, check_same_device, shapes
from ._device import sm_count

try:  # Triton is optional on CPU-only installs; CUDA tensors need it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

SUPPORTED_HEAD_DIMS = (32, 64, 128)
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- Triton

if triton is not None:

    @triton.jit
    def _tile_coords(TILES, NUM_M, SCHED: tl.constexpr):
        # Axis 0 of every forward launch names one query tile: entry e of a tile list
        # (SCHED, `paged_tiles`: (b << 16) | tile, or -1 for nothing to do) or
        # b * NUM_M + tile. A tile computes the same rows the same way whichever program
        # runs it, so the bits do not depend on the grid; with a list the grid depends
        # on its length only (a CUDA graph of mixed steps). b = -1: nothing to do.
        if SCHED:
            e = tl.load(TILES + tl.program_id(0))
            b = tl.where(e < 0, -1, e >> 16)
            pid_m = e & 0xFFFF
        else:
            b = tl.program_id(0) // NUM_M
            pid_m = tl.program_id(0) % NUM_M
        return b, pid_m

    @triton.jit
    def _tile_rows(CU_Q, SEQ_LENS, b, pid_m, kvh,
                   PAGED: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr,
                   BLOCK_M: tl.constexpr):
        # Row r of the tile is token pid_m * TOK_M + r // GP of sequence b, query head
        # kvh * G + r % GP (pad rows, r % GP >= G or past q_len, are computed and dropped).
        # hi: the tile's last row's position + 1, how far its keys reach.
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
        if PAGED:
            n = tl.load(SEQ_LENS + b)
        else:
            n = q_len
        rows = tl.arange(0, BLOCK_M)
        tok = pid_m * TOK_M + rows // GP
        hg = rows % GP
        row_ok = (tok < q_len) & (hg < G)
        pos = n - q_len + tok
        hi = n - q_len + tl.minimum((pid_m + 1) * TOK_M, q_len)
        return q_start, q_len, n, kvh * G + hg, row_ok, pos, hi, (q_start + tok).to(tl.int64)

    @triton.jit
    def _load_q(Q, q_rows, head, row_ok, stride_qt, stride_qh, HEAD_DIM: tl.constexpr):
        offs_d = tl.arange(0, HEAD_DIM)
        return tl.load(Q + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                       mask=row_ok[:, None], other=0.0)

    @triton.jit
    def _attn_split(q, K, V, BLOCK_TABLE, b, kvh, q_start, n, pos, lo, hi,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt, qk_scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                    PAGE: tl.constexpr, PAGED: tl.constexpr, DOT_PREC: tl.constexpr):
        # One split: online softmax in base 2 over keys lo .. hi-1 (lo a multiple of SPLIT,
        # so of BLOCK_N) from a fresh state, KV tile by KV tile in key order. Returns
        # (m, l, acc) unnormalised. The one body every forward path runs per (tile, split).
        # Varlen: keys share the queries' packed rows (stride_kb unused). Paged: key j of
        # sequence b is slot j % PAGE of physical block BLOCK_TABLE[b, j // PAGE].
        offs_d = tl.arange(0, HEAD_DIM)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            key_ok = offs_n < n
            if PAGED:
                blk = tl.load(BLOCK_TABLE + b * stride_bt + offs_n // PAGE, mask=key_ok, other=0).to(tl.int64)
                slot = offs_n % PAGE
                k_off = blk * stride_kb + slot * stride_ks
                v_off = blk * stride_vb + slot * stride_vs
            else:
                key_rows = (q_start + offs_n).to(tl.int64)
                k_off = key_rows * stride_ks
                v_off = key_rows * stride_vs
            k = tl.load(K + k_off[:, None] + kvh * stride_kh + offs_d[None, :], mask=key_ok[:, None], other=0.0)
            v = tl.load(V + v_off[:, None] + kvh * stride_vh + offs_d[None, :], mask=key_ok[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            qk = tl.where(offs_n[None, :] <= pos[:, None], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row of a tile that straddles the split's start may see no key of the
            # split (causal: then none of its tiles): its max stays -inf, and
            # subtracting 0 instead keeps p = alpha = 0 where -inf - -inf is NaN. Rows
            # with a finite max subtract it unchanged.
            m_off = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(qk - m_off[:, None])
            alpha = tl.exp2(m_i - m_off)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
            m_i = m_new
        return m_i, l_i, acc

    @triton.jit
    def _attn_merge(m_i, l_i, acc, m_s, l_s, acc_s):
        # Running state (m_i, l_i, acc) += split (m_s, l_s, acc_s): THE merge of every
        # path, fp32, the fused multiply-adds spelled out so that no compiler picks which
        # product to contract. m_i is finite (every row sees key 0 in split 0); a split
        # the row does not see (m_s = -inf, l_s = 0, acc_s = 0) is an exact no-op:
        # a = exp2(0) = 1, c = 0.
        m = tl.maximum(m_i, m_s)
        a = tl.exp2(m_i - m)
        c = tl.exp2(m_s - m)
        return m, tl.fma(l_i, a, l_s * c), tl.fma(acc, a[:, None], acc_s * c[:, None])

    @triton.jit
    def _attn_finish(O, LSE, m_i, l_i, acc, q_rows, head, row_ok, stride_ot, stride_oh, Hq,
                     HEAD_DIM: tl.constexpr, WRITE_LSE: tl.constexpr):
        offs_d = tl.arange(0, HEAD_DIM)
        out = acc / l_i[:, None]
        tl.store(O + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=row_ok[:, None])
        if WRITE_LSE:  # base-2 log-sum-exp of the scaled scores, for the backward
            tl.store(LSE + q_rows * Hq + head, m_i + tl.log2(l_i), mask=row_ok)

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, LSE,
        CU_Q, SEQ_LENS, BLOCK_TABLE, TILES,
        stride_qt, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_ot, stride_oh,
        stride_bt,
        qk_scale, Hq, NUM_M,
        G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
        PAGE: tl.constexpr, PAGED: tl.constexpr, WRITE_LSE: tl.constexpr, DOT_PREC: tl.constexpr,
        SCHED: tl.constexpr,
    ):
        # Serial form, grid (query tile, kv head): the tile's splits one after the other
        # in this program, each merged into the running state in split order. Split 0
        # is the running state itself (no merge), so a sequence of <= SPLIT keys gets
        # the bits of the single online softmax this kernel ran before splits.
        kvh = tl.program_id(1)
        b, pid_m = _tile_coords(TILES, NUM_M, SCHED)
        if b < 0:
            return
        q_start, q_len, n, head, row_ok, pos, hi, q_rows = _tile_rows(CU_Q, SEQ_LENS, b, pid_m, kvh,
                                                                     PAGED, G, GP, TOK_M, BLOCK_M)
        if pid_m * TOK_M >= q_len:
            return
        q = _load_q(Q, q_rows, head, row_ok, stride_qt, stride_qh, HEAD_DIM)
        m_i, l_i, acc = _attn_split(q, K, V, BLOCK_TABLE, b, kvh, q_start, n, pos, 0, tl.minimum(hi, SPLIT),
                                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
                                    qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, PAGE, PAGED, DOT_PREC)
        for lo in range(SPLIT, hi, SPLIT):
            m_s, l_s, acc_s = _attn_split(q, K, V, BLOCK_TABLE, b, kvh, q_start, n, pos, lo,
                                          tl.minimum(hi, lo + SPLIT),
                                          stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                          stride_bt, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, PAGE, PAGED, DOT_PREC)
            m_i, l_i, acc = _attn_merge(m_i, l_i, acc, m_s, l_s, acc_s)
        _attn_finish(O, LSE, m_i, l_i, acc, q_rows, head, row_ok, stride_ot, stride_oh, Hq, HEAD_DIM, WRITE_LSE)

    @triton.jit
    def _attn_fwd_split_kernel(
        Q, K, V, M_S, L_S, ACC_S,
        CU_Q, SEQ_LENS, BLOCK_TABLE, TILES,
        stride_qt, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_bt,
        qk_scale, Hq, NUM_M, T,
        G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
        PAGE: tl.constexpr, PAGED: tl.constexpr, DOT_PREC: tl.constexpr, SCHED: tl.constexpr,
    ):
        # Split-parallel form (flash-decoding), grid (query tile, kv head, split s): the
        # serial kernel's split s of the same tile, computed by `_attn_split` on the same
        # keys, written unnormalised to the fp32 scratch M_S/L_S [splits, T, Hq] and
        # ACC_S [splits, T, Hq, D]; `_attn_combine_kernel` merges them in split order.
        kvh = tl.program_id(1)
        lo = tl.program_id(2) * SPLIT
        b, pid_m = _tile_coords(TILES, NUM_M, SCHED)
        if b < 0:
            return
        q_start, q_len, n, head, row_ok, pos, hi, q_rows = _tile_rows(CU_Q, SEQ_LENS, b, pid_m, kvh,
                                                                     PAGED, G, GP, TOK_M, BLOCK_M)
        if pid_m * TOK_M >= q_len or lo >= hi:
            return
        q = _load_q(Q, q_rows, head, row_ok, stride_qt, stride_qh, HEAD_DIM)
        m_s, l_s, acc_s = _attn_split(q, K, V, BLOCK_TABLE, b, kvh, q_start, n, pos, lo, tl.minimum(hi, lo + SPLIT),
                                      stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
                                      qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, PAGE, PAGED, DOT_PREC)
        r = (tl.program_id(2) * T + q_rows) * Hq + head
        tl.store(M_S + r, m_s, mask=row_ok)
        tl.store(L_S + r, l_s, mask=row_ok)
        tl.store(ACC_S + r[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], acc_s, mask=row_ok[:, None])

    @triton.jit
    def _load_split(M_S, L_S, ACC_S, s, T, q_rows, head, row_ok, Hq, HEAD_DIM: tl.constexpr):
        r = (s * T + q_rows) * Hq + head
        acc = tl.load(ACC_S + r[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], mask=row_ok[:, None],
                      other=0.0)
        return tl.load(M_S + r, mask=row_ok, other=0.0), tl.load(L_S + r, mask=row_ok, other=1.0), acc

    @triton.jit
    def _attn_combine_kernel(
        O, LSE, M_S, L_S, ACC_S,
        CU_Q, SEQ_LENS, TILES,
        stride_ot, stride_oh, Hq, NUM_M, T,
        G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
        SPLIT: tl.constexpr, PAGED: tl.constexpr, WRITE_LSE: tl.constexpr, SCHED: tl.constexpr,
    ):
        # Grid (query tile, kv head) as the serial kernel's: the same tiles, the same
        # splits 0 .. cdiv(hi, SPLIT) - 1, split 0 as the running state and the others
        # merged by `_attn_merge` in split order, then `_attn_finish`. The scratch holds
        # fp32 exactly as the serial kernel's registers did, so the bits are the same.
        kvh = tl.program_id(1)
        b, pid_m = _tile_coords(TILES, NUM_M, SCHED)
        if b < 0:
            return
        q_start, q_len, n, head, row_ok, pos, hi, q_rows = _tile_rows(CU_Q, SEQ_LENS, b, pid_m, kvh,
                                                                     PAGED, G, GP, TOK_M, BLOCK_M)
        if pid_m * TOK_M >= q_len:
            return
        m_i, l_i, acc = _load_split(M_S, L_S, ACC_S, 0, T, q_rows, head, row_ok, Hq, HEAD_DIM)
        for s in range(1, tl.cdiv(hi, SPLIT)):
            m_s, l_s, acc_s = _load_split(M_S, L_S, ACC_S, s, T, q_rows, head, row_ok, Hq, HEAD_DIM)
            m_i, l_i, acc = _attn_merge(m_i, l_i, acc, m_s, l_s, acc_s)
        _attn_finish(O, LSE, m_i, l_i, acc, q_rows, head, row_ok, stride_ot, stride_oh, Hq, HEAD_DIM, WRITE_LSE)

    @triton.jit
    def _attn_bwd_delta_kernel(O, DO, DELTA, n_rows, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr):
        # delta[r] = <o_r, do_r> over head_dim; O, DO contiguous [rows, D].
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        d = tl.arange(0, HEAD_DIM)
        ok = r < n_rows
        o = tl.load(O + r.to(tl.int64)[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        do = tl.load(DO + r.to(tl.int64)[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + r, tl.sum(o * do, 1), mask=ok)

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, CU,
        qk_scale, sm_scale, Hq, Hkv,
        G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        # One program per (KV tile, kv head, sequence). All tensors contiguous:
        # Q/DO [T, Hq, D], K/V/DK/DV [T, Hkv, D], LSE/DELTA [T, Hq].
        pid_n = tl.program_id(0)
        kvh = tl.program_id(1)
        b = tl.program_id(2)
        start = tl.load(CU + b)
        n = tl.load(CU + b + 1) - start
        start_n = pid_n * BLOCK_N
        if start_n >= n:
            return
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        key_ok = offs_n < n
        kv_rows = (start + offs_n).to(tl.int64)
        kv_ptr_off = kv_rows[:, None] * (Hkv * HEAD_DIM) + kvh * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_ptr_off, mask=key_ok[:, None], other=0.0)
        v = tl.load(V + kv_ptr_off, mask=key_ok[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        rows = tl.arange(0, BLOCK_M)
        hg = rows % GP
        head = kvh * G + hg
        for m0 in range((start_n // TOK_M) * TOK_M, n, TOK_M):
            tok = m0 + rows // GP
            row_ok = (tok < n) & (hg < G)
            q_rows = (start + tok).to(tl.int64)
            qo_off = q_rows[:, None] * (Hq * HEAD_DIM) + head[:, None] * HEAD_DIM + offs_d[None, :]
            q = tl.load(Q + qo_off, mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + qo_off, mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE + q_rows * Hq + head, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + q_rows * Hq + head, mask=row_ok, other=0.0)
            qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
            keep = (offs_n[:, None] <= tok[None, :]) & row_ok[None, :] & key_ok[:, None]
            pT = tl.where(keep, tl.exp2(qkT * qk_scale - lse[None, :]), 0.0)
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PREC)
        dk = dk * sm_scale
        tl.store(DK + kv_ptr_off, dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
        tl.store(DV + kv_ptr_off, dv.to(DV.dtype.element_ty), mask=key_ok[:, None])

    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, CU,
        qk_scale, sm_scale, Hq, Hkv,
        G: tl.constexpr, GP: tl.constexpr, TOK_M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        # One program per (query tile, kv head, sequence); KV tiles from key 0 in order.
        pid_m = tl.program_id(0)
        kvh = tl.program_id(1)
        b = tl.program_id(2)
        start = tl.load(CU + b)
        n = tl.load(CU + b + 1) - start
        if pid_m * TOK_M >= n:
            return
        rows = tl.arange(0, BLOCK_M)
        tok = pid_m * TOK_M + rows // GP
        hg = rows % GP
        row_ok = (tok < n) & (hg < G)
        head = kvh * G + hg
        offs_d = tl.arange(0, HEAD_DIM)
        q_rows = (start + tok).to(tl.int64)
        qo_off = q_rows[:, None] * (Hq * HEAD_DIM) + head[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + qo_off, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + qo_off, mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + q_rows * Hq + head, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + q_rows * Hq + head, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        hi = tl.minimum((pid_m + 1) * TOK_M, n)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            key_ok = offs_n < n
            kv_off = (start + offs_n).to(tl.int64)[:, None] * (Hkv * HEAD_DIM) + kvh * HEAD_DIM + offs_d[None, :]
            k = tl.load(K + kv_off, mask=key_ok[:, None], other=0.0)
            v = tl.load(V + kv_off, mask=key_ok[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            keep = (offs_n[None, :] <= tok[:, None]) & row_ok[:, None] & key_ok[None, :]
            p = tl.where(keep, tl.exp2(qk * qk_scale - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
        dq = dq * sm_scale
        tl.store(DQ + qo_off, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _write_kv_cache_kernel(
        K, V, KC, VC, SLOTS,
        stride_kt, stride_kh, stride_vt, stride_vh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
        Hkv, PAGE: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        t = tl.program_id(0)
        slot = tl.load(SLOTS + t).to(tl.int64)
        if slot < 0:  # padding token (vLLM marks it with slot -1)
            return
        blk = slot // PAGE
        off = slot % PAGE
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, HEAD_DIM)
        ok = (h < Hkv)[:, None]
        k = tl.load(K + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=ok)
        v = tl.load(V + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=ok)
        tl.store(KC + blk * stride_kcb + off * stride_kcs + h[:, None] * stride_kch + d[None, :], k, mask=ok)
        tl.store(VC + blk * stride_vcb + off * stride_vcs + h[:, None] * stride_vch + d[None, :], v, mask=ok)


# Keys per KV split, on every path: a row's keys are cut at 0, SPLIT, 2 * SPLIT, ...
# whatever the batch, the query length or the kernel form (serial or split-parallel).
# A multiple of every BLOCK_N. 256: at decode, batch 1, ctx 1k, Qwen3-8B (8 kv heads)
# that is 32 programs instead of 8; at 4k, 128. Changing it changes the bits of every
# sequence longer than the old or new value (trainer and sampler together).
_SPLIT = 256
# Most fp32 scratch (m, l, acc of every split of every query row) a split-parallel call
# may take; above it the serial kernel runs (same bits). 32 MiB: Qwen3-8B (32 heads x
# 128) at max_model_len 4096 (16 splits) splits decode steps of up to 126 tokens.
_SPLIT_SCRATCH_BYTES = 32 << 20


def _fwd_config(dtype: torch.dtype, head_dim: int) -> dict:
    """Forward tile config, a function of dtype and head_dim ONLY: the varlen and the
    paged launches, serial and split-parallel, must use the same one (it fixes the MMA
    shape and the layouts behind the tl.max / tl.sum trees)."""
    # split_stages: the split-parallel kernel's software pipelining depth. It schedules
    # the loads only (the arithmetic and its layouts are num_warps' and the tiles'), so it
    # may differ from the serial kernel's; test_split_kv_cuda checks the bits.
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=32, SPLIT=_SPLIT, num_warps=4, num_stages=2, split_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=64, SPLIT=_SPLIT, num_warps=4, num_stages=2, split_stages=2)


def _bwd_config(dtype: torch.dtype, head_dim: int, max_seqlen: int) -> dict:
    """Backward tile config. H100 sweep, Qwen3-8B bf16, T=8192: 64/64/4 warps 2.24 ms
    fwd+bwd vs 3.10 ms for 64/32. H200 sweep (benchmarks/bench_attention.py
    --bwd-sweep, Qwen3-0.6B heads, 8192 tokens; docs/benchmarks.md): as 4 x 2048,
    one stage is fastest (1.18 ms, 1.08x SDPA; two stages 1.31 ms); as 16 x 512, two
    stages are (0.64 ms against 0.80 ms, 1.36x against 1.69x SDPA). Any config gives
    deterministic gradients; on both sweeps every config tried gave the same bits,
    since chained tl.dot accumulation keeps the k-step order."""
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1)
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2 if max_seqlen <= 512 else 1)


def _group_packing(op: str, hq: int, hkv: int, block_m: int) -> tuple[int, int, int]:
    """(G, GP, TOK_M): group size, its power-of-two padding, tokens per query tile."""
    g = hq // hkv
    gp = triton.next_power_of_2(g)
    check(gp <= block_m, op, f"GQA group of {g} query heads per kv head exceeds the CUDA tile ({block_m} rows)")
    return g, gp, block_m // gp


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs: true fp32 products (no TF32), as the numerics contract asks.
    return "ieee" if dtype == torch.float32 else "tf32"


def paged_tile_rows(dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int) -> int:
    """Query tokens per tile of the attention forward (paged and varlen alike) for these
    heads: what `paged_tiles` cuts each sequence's new tokens into."""
    return _group_packing("paged_attention", num_heads, num_kv_heads, _fwd_config(dtype, head_dim)["BLOCK_M"])[2]


def paged_tiles(q_lens: torch.Tensor, tok_m: int, out: torch.Tensor) -> torch.Tensor:
    """The tile list of `paged_attention(..., tiles=)`: sequence b's new tokens (q_lens[b],
    a CPU integer tensor) in tiles of tok_m (`paged_tile_rows`), entry (b << 16) | tile,
    in sequence order, then -1 up to out's length. Written into `out` (int32 [capacity],
    any device; CPU values copied without a host sync) and returned. ValueError when the
    tiles do not fit, or a sequence or tile index does not fit its 16 bits."""
    op = "paged_tiles"
    check(q_lens.device.type == "cpu" and q_lens.dim() == 1 and not q_lens.is_floating_point(), op,
          f"q_lens must be a 1-D CPU integer tensor, got {q_lens.dtype} {tuple(q_lens.shape)} on {q_lens.device}")
    check(out.dtype == torch.int32 and out.dim() == 1, op, f"out must be int32 [capacity], got {out.dtype}")
    q_lens = q_lens.to(torch.int64)
    per = (q_lens + tok_m - 1) // tok_m
    total = int(per.sum())
    check(total <= out.numel(), op, f"{total} tiles exceed the capacity {out.numel()}")
    if q_lens.numel():
        check(int(q_lens.min()) >= 0, op, f"negative query length {int(q_lens.min())}")
        check(q_lens.numel() < 1 << 15 and int(per.max()) < 1 << 16, op,
              f"{q_lens.numel()} sequences or {int(per.max())} tiles per sequence exceed the 16-bit fields")
    # Tile i belongs to the sequence whose end is the first above i: count the ends <= i
    # by a cumulative sum. Not repeat_interleave: its CPU loop splits over threads at a
    # grain of one element, and in a sampler worker whose threads contend it took 2.8 ms
    # a call (H200, 8B seed experiment 2, docs/benchmarks.md) for a few hundred entries.
    ends = torch.cumsum(per, 0)
    marks = torch.zeros(total + 1, dtype=torch.int64)
    marks.index_add_(0, ends, torch.ones_like(ends))
    seq = torch.cumsum(marks[:total], 0)
    tiles = torch.full((out.numel(),), -1, dtype=torch.int32)
    tiles[:total] = (seq << 16 | (torch.arange(total) - (ends - per)[seq])).to(torch.int32)
    if out.device.type == "cpu":
        return out.copy_(tiles)
    return out.copy_(tiles.pin_memory(), non_blocking=True)


def kv_splits(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, max_q_len: int) -> int:
    """Split slots for a split-parallel `paged_attention` launch, 0 for the serial kernel.
    From host-known sizes only (no device read, so a CUDA graph captures one choice):
    every sequence fits one query tile (max_q_len <= the tile's tokens: decode, short
    extends), the block table's width bounds seq_len (vLLM's table is sized by
    max_model_len), at least two splits, the scratch within _SPLIT_SCRATCH_BYTES, and
    fewer serial programs (sequences x kv heads) than the device has SMs: a batch that
    fills the SMs already would pay the empty split programs and the combine for nothing
    (8B decode at batch 64 and 140 keys: 512 serial programs, 4096 split slots).
    Either kernel gives every row the same bits; this picks the faster one."""
    T, Hq, D = q.shape
    Hkv = k_cache.shape[-2]
    cfg = _fwd_config(q.dtype, D)
    tok_m = _group_packing("paged_attention", Hq, Hkv, cfg["BLOCK_M"])[2]
    splits = triton.cdiv(block_table.shape[1] * k_cache.shape[1], cfg["SPLIT"])
    fits = splits * T * Hq * (D + 2) * 4 <= _SPLIT_SCRATCH_BYTES
    idle = not q.is_cuda or block_table.shape[0] * Hkv < sm_count(q.get_device())  # off CUDA: the interpreter
    return splits if max_q_len <= tok_m and splits >= 2 and fits and idle else 0


def _triton_fwd(op, q, k, v, cu_q, seq_lens, block_table, page, max_q, scale, paged, want_lse, tiles=None,
                splits=0):
    """The forward launch: serial (`_attn_fwd_kernel`) with splits=0, else split-parallel
    over `splits` split slots (>= cdiv(every seq_len, SPLIT); from `kv_splits`)."""
    T, Hq, D = q.shape
    Hkv = k.shape[-2]
    B = cu_q.numel() - 1
    cfg = _fwd_config(q.dtype, D)
    G, GP, TOK_M = _group_packing(op, Hq, Hkv, cfg["BLOCK_M"])
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((T, Hq), dtype=torch.float32, device=q.device) if want_lse else out
    if T == 0 or B == 0:
        return out, lse
    if paged:
        kv = (k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), block_table.stride(0))
        bt, sl = block_table, seq_lens
    else:
        kv = (0, k.stride(0), k.stride(1), 0, v.stride(0), v.stride(1), 0)
        bt, sl = cu_q, cu_q  # unused pointers
    num_m = triton.cdiv(max_q, TOK_M)
    tiles_ = cu_q if tiles is None else tiles
    n_tiles = num_m * B if tiles is None else tiles.numel()
    consts = dict(G=G, GP=GP, TOK_M=TOK_M, BLOCK_M=cfg["BLOCK_M"], HEAD_DIM=D, SPLIT=cfg["SPLIT"], PAGED=paged,
                  SCHED=tiles is not None, num_warps=cfg["num_warps"])
    kern = dict(BLOCK_N=cfg["BLOCK_N"], PAGE=page, DOT_PREC=_dot_prec(q.dtype))
    if not splits:
        _attn_fwd_kernel[(n_tiles, Hkv)](
            q, k, v, out, lse, cu_q, sl, bt, tiles_, q.stride(0), q.stride(1), *kv[:6], out.stride(0),
            out.stride(1), kv[6], scale * _LOG2E, Hq, num_m, WRITE_LSE=want_lse, num_stages=cfg["num_stages"],
            **consts, **kern)
        return out, lse
    m_s = torch.empty((splits, T, Hq), dtype=torch.float32, device=q.device)
    l_s = torch.empty_like(m_s)
    acc_s = torch.empty((splits, T, Hq, D), dtype=torch.float32, device=q.device)
    _attn_fwd_split_kernel[(n_tiles, Hkv, splits)](
        q, k, v, m_s, l_s, acc_s, cu_q, sl, bt, tiles_, q.stride(0), q.stride(1), *kv,
        scale * _LOG2E, Hq, num_m, T, num_stages=cfg["split_stages"], **consts, **kern)
    _attn_combine_kernel[(n_tiles, Hkv)](
        out, lse, m_s, l_s, acc_s, cu_q, sl, tiles_, out.stride(0), out.stride(1), Hq, num_m, T,
        WRITE_LSE=want_lse, num_stages=cfg["num_stages"], **consts)
    return out, lse


def _triton_bwd(do, q, k, v, out, lse, cu, max_seqlen, scale):
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    B = cu.numel() - 1
    cfg = _bwd_config(q.dtype, D, max_seqlen)
    G, GP, TOK_M = _group_packing("varlen_attention backward", Hq, Hkv, cfg["BLOCK_M"])
    q, k, v, do, out = (t.contiguous() for t in (q, k, v, do, out))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if T == 0 or B == 0:
        return dq, dk, dv
    delta = torch.empty((T, Hq), dtype=torch.float32, device=q.device)
    _attn_bwd_delta_kernel[(triton.cdiv(T * Hq, 64),)](out, do, delta, T * Hq, HEAD_DIM=D, BLOCK_R=64)
    common = dict(G=G, GP=GP, TOK_M=TOK_M, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=D,
                  DOT_PREC=_dot_prec(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    args = (scale * _LOG2E, scale, Hq, Hkv)
    _attn_bwd_dkdv_kernel[(triton.cdiv(max_seqlen, cfg["BLOCK_N"]), Hkv, B)](
        q, k, v, do, lse, delta, dk, dv, cu, *args, **common)
    _attn_bwd_dq_kernel[(triton.cdiv(max_seqlen, TOK_M), Hkv, B)](
        q, k, v, do, lse, delta, dq, cu, *args, **common)
    return dq, dk, dv


# ----------------------------------------------------------------------------- CPU

def _cpu_ops():
    from ._cpu_build import load_cpu_ops

    return load_cpu_ops("attention")


# ----------------------------------------------------------------------------- validation

def _check_heads(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **named) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(op, name, t)
    check(q.dtype == k.dtype == v.dtype, op, f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    check(k.shape == v.shape, op, f"k and v shapes differ: {shapes(k=k, v=v)}")
    D = q.shape[-1]
    check(D in SUPPORTED_HEAD_DIMS, op, f"head_dim {D} unsupported (supported: {SUPPORTED_HEAD_DIMS}); "
          + shapes(q=q, **named))
    check(k.shape[-1] == D, op, f"head_dim of q and k differ: {shapes(q=q, **named)}")
    hq, hkv = q.shape[1], k.shape[-2]
    check(hkv > 0 and hq % hkv == 0, op, f"{hq} query heads not divisible by {hkv} kv heads: {shapes(q=q, **named)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(t.stride(-1) == 1, op, f"{name} must be contiguous in head_dim (stride {t.stride()})")


def _check_cu(op: str, name: str, cu: torch.Tensor, total: int) -> list[int]:
    check(isinstance(cu, torch.Tensor) and cu.dtype == torch.int32 and cu.dim() == 1 and cu.numel() >= 2, op,
          f"{name} must be a 1-D int32 tensor [B+1], got "
          + (f"{cu.dtype} {tuple(cu.shape)}" if isinstance(cu, torch.Tensor) else type(cu).__name__))
    check(cu.is_contiguous(), op, f"{name} must be contiguous")
    vals = cu.tolist()
    check(vals[0] == 0 and vals[-1] == total and all(a <= b for a, b in zip(vals, vals[1:])), op,
          f"{name} must be non-decreasing from 0 to {total} (tokens), got {vals[:8]}{'...' if len(vals) > 8 else ''}")
    return vals


# ----------------------------------------------------------------------------- varlen

class _VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, scale):
        if q.is_cuda:
            out, lse = _triton_fwd("varlen_attention", q, k, v, cu_seqlens, None, None, 1, max_seqlen, scale,
                                   paged=False, want_lse=True)
        else:
            out, lse = _cpu_ops().attn_varlen_fwd(q, k, v, cu_seqlens, scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.max_seqlen, ctx.scale = max_seqlen, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu = ctx.saved_tensors
        dout = dout.to(q.dtype)
        if q.is_cuda:
            dq, dk, dv = _triton_bwd(dout, q, k, v, out, lse, cu, ctx.max_seqlen, ctx.scale)
        else:
            dq, dk, dv = _cpu_ops().attn_varlen_bwd(dout.contiguous(), q, k, v, out, lse, cu, ctx.scale)
        return dq, dk, dv, None, None, None


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, scale: float) -> torch.Tensor:
    """Causal GQA attention over packed sequences, with autograd.

    Args:
        q: [T, Hq, D] bf16/fp16/fp32, D in {32, 64, 128}, last dim contiguous.
        k, v: [T, Hkv, D], same dtype; Hq % Hkv == 0.
        cu_seqlens: [B+1] int32, 0 = cu[0] <= ... <= cu[B] = T; sequence b is rows cu[b]:cu[b+1].
        max_seqlen: >= the longest sequence (sizes the CUDA grid).
        scale: softmax scale (usually D ** -0.5).
    Returns:
        [T, Hq, D] in q's dtype. Row bits equal `paged_attention`'s for the same
        query row (module docstring).
    """
    op = "varlen_attention"
    _check_heads(op, q, k, v)
    check(q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0], op,
          f"expected q [T, Hq, D], k/v [T, Hkv, D]: {shapes(q=q, k=k, v=v)}")
    check_same_device(op, q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    vals = _check_cu(op, "cu_seqlens", cu_seqlens, q.shape[0])
    longest = max(b - a for a, b in zip(vals, vals[1:]))
    check(int(max_seqlen) >= longest, op, f"max_seqlen {max_seqlen} < longest sequence {longest}")
    return _VarlenAttention.apply(q, k, v, cu_seqlens, int(max_seqlen), float(scale))


# ----------------------------------------------------------------------------- paged

def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                    max_q_len: int | None = None, tiles: torch.Tensor | None = None) -> torch.Tensor:
    """Causal GQA attention of new queries against a paged KV cache (forward only).

    Args:
        q: [Tq, Hq, D]; the queries of sequence b are rows cu_seqlens_q[b]:cu_seqlens_q[b+1],
            its last q_len_b tokens (positions seq_len_b - q_len_b .. seq_len_b - 1).
        k_cache, v_cache: [num_blocks, block_size, Hkv, D] (vLLM flash layout), same dtype as q,
            already holding every key of the context including the new tokens
            (`write_kv_cache` first).
        block_table: [B, max_blocks] int32; key j of sequence b lives at
            slot j % block_size of block block_table[b, j // block_size].
        cu_seqlens_q: [B+1] int32.
        seq_lens: [B] int32, context length including the new tokens (>= q_len_b).
        scale: softmax scale.
        max_q_len: None: the metadata (cu_seqlens_q, seq_lens, block_table) is read back
            and validated on the host (three device-to-host syncs). An int (>= every
            q_len): the caller has validated the metadata already (vLLM's metadata
            builder, once per step for all layers); nothing is read back, so the call
            is free of host syncs and can be captured in a CUDA graph. The bits do not
            depend on which: max_q_len only sizes the grid. On CUDA, a step whose
            sequences each fit one query tile (decode) runs split-parallel over the KV
            (`kv_splits`; module docstring), same bits.
        tiles: with max_q_len, on CUDA: the grid runs over this tile list (`paged_tiles`,
            int32 [capacity] on q's device) instead of (query tile, sequence), so its
            size depends on the capacity alone and a step of any mix of prefill and
            decode can be replayed from a CUDA graph captured at that capacity. The
            list must cover every sequence's tiles; the bits are the same.
    Returns:
        [Tq, Hq, D] in q's dtype, each row bitwise equal to the same row of
        `varlen_attention` over the whole sequence.
    """
    op = "paged_attention"
    _check_heads(op, q, k_cache, v_cache, k_cache=k_cache)
    check(q.dim() == 3 and k_cache.dim() == 4, op,
          f"expected q [Tq, Hq, D], caches [num_blocks, block_size, Hkv, D]: {shapes(q=q, k_cache=k_cache)}")
    check_same_device(op, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                      cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens)
    num_blocks, page = k_cache.shape[0], k_cache.shape[1]
    if max_q_len is not None:
        B = cu_seqlens_q.numel() - 1
        check(seq_lens.dtype == torch.int32 and seq_lens.shape == (B,) and block_table.dtype == torch.int32
              and block_table.dim() == 2 and block_table.shape[0] == B and block_table.stride(1) == 1, op,
              f"expected int32 seq_lens [B={B}] and block_table [B, max_blocks]: "
              f"{shapes(seq_lens=seq_lens, block_table=block_table)}")
        if q.is_cuda:
            out, _ = _triton_fwd(op, q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_table, page,
                                 int(max_q_len), float(scale), paged=True, want_lse=False, tiles=tiles,
                                 splits=kv_splits(q, k_cache, block_table, int(max_q_len)))
            return out
        return _cpu_ops().attn_paged_fwd(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens, float(scale))
    cq = _check_cu(op, "cu_seqlens_q", cu_seqlens_q, q.shape[0])
    B = len(cq) - 1
    check(seq_lens.dtype == torch.int32 and seq_lens.shape == (B,) and seq_lens.is_contiguous(), op,
          f"seq_lens must be contiguous int32 [B={B}], got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    check(block_table.dtype == torch.int32 and block_table.dim() == 2 and block_table.shape[0] == B
          and block_table.stride(1) == 1, op,
          f"block_table must be int32 [B={B}, max_blocks] with contiguous rows, got "
          f"{block_table.dtype} {tuple(block_table.shape)}")
    sl = seq_lens.tolist()
    q_lens = [b - a for a, b in zip(cq, cq[1:])]
    for b in range(B):
        check(q_lens[b] <= sl[b], op, f"sequence {b}: q_len {q_lens[b]} > seq_len {sl[b]}")
    need = [(n + page - 1) // page for n in sl]
    check(max(need, default=0) <= block_table.shape[1], op,
          f"block_table {tuple(block_table.shape)} too short for seq_lens (needs {max(need)} blocks of {page})")
    if B and max(need):
        # Host copy of the used columns only: device-side masking would cost several
        # launches and syncs per decode step.
        ids = block_table[:, :max(need)].cpu()
        ids = ids[torch.arange(ids.shape[1])[None, :] < torch.tensor(need)[:, None]]
        check(bool(((ids >= 0) & (ids < num_blocks)).all()), op,
              f"block_table holds block ids outside [0, {num_blocks}) within seq_lens")
    if q.is_cuda:
        max_q = max(q_lens, default=0)
        out, _ = _triton_fwd(op, q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_table, page, max_q,
                             float(scale), paged=True, want_lse=False,
                             splits=kv_splits(q, k_cache, block_table, max_q))
        return out
    return _cpu_ops().attn_paged_fwd(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens, float(scale))


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, check_slots: bool = True) -> None:
    """Copy k, v [T, Hkv, D] into the caches [num_blocks, block_size, Hkv, D] in place:
    token t goes to block slot_mapping[t] // block_size, offset slot_mapping[t] % block_size.
    A negative slot (vLLM's padding marker) is skipped. A pure copy: bits unchanged.
    check_slots=False skips the upper-bound check of the slots (one device-to-host sync)
    for callers whose slots come from a validated source (vLLM's scheduler): the call is
    then free of host syncs and can be captured in a CUDA graph."""
    op = "write_kv_cache"
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_float(op, name, t)
    check(k.dim() == 3 and k.shape == v.shape and k_cache.dim() == 4 and k_cache.shape == v_cache.shape
          and k.shape[1:] == k_cache.shape[2:], op,
          f"expected k/v [T, Hkv, D], caches [num_blocks, block_size, Hkv, D]: "
          f"{shapes(k=k, v=v, k_cache=k_cache, v_cache=v_cache)}")
    check(k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, op,
          f"dtypes differ: k {k.dtype}, v {v.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype}")
    check(k.shape[-1] in SUPPORTED_HEAD_DIMS, op,
          f"head_dim {k.shape[-1]} unsupported (supported: {SUPPORTED_HEAD_DIMS})")
    check(slot_mapping.dtype in (torch.int64, torch.int32) and slot_mapping.shape == (k.shape[0],), op,
          f"slot_mapping must be int64 [T={k.shape[0]}], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check(t.stride(-1) == 1, op, f"{name} must be contiguous in head_dim (stride {t.stride()})")
    check_same_device(op, k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    n_slots = k_cache.shape[0] * k_cache.shape[1]
    if k.shape[0] == 0:
        return
    check(not check_slots or int(slot_mapping.max()) < n_slots, op,
          f"slot_mapping has slots >= {n_slots} (num_blocks * block_size)")
    if k.is_cuda:
        slots = slot_mapping.contiguous()
        _write_kv_cache_kernel[(k.shape[0],)](
            k, v, k_cache, v_cache, slots,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            k.shape[1], PAGE=k_cache.shape[1], BLOCK_H=triton.next_power_of_2(k.shape[1]), HEAD_DIM=k.shape[2],
        )
        return
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blk, off = slots // k_cache.shape[1], slots % k_cache.shape[1]
    k_cache[blk, off] = k[keep]
    v_cache[blk, off] = v[keep]
