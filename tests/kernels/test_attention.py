"""Tests for exact_kernels.attention (varlen_attention, paged_attention, write_kv_cache).

Two kinds, never mixed:
  * closeness (`*_close`): forward and dq/dk/dv against the fp32 references in
    exact_kernels.reference, per dtype, with the tolerances stated in TOL / GRAD_TOL;
  * invariance (`*_invariant` / `*_bitwise`): torch.equal, no tolerance, no retry.

The chain these tests close for attention (docs/design.md, "One attention algorithm"):
trainer prefill (varlen, any packing) == sampler prompt prefill (varlen or paged with
q_len = seq_len) == sampler chunked prefill / extend (paged) == sampler decode
(paged, q_len 1, any batch), so every query row has one value wherever it is computed.

Run: python -m pytest tests/kernels/test_attention.py -q   (cuda params need the gpu marker)
"""
from __future__ import annotations

import random

import pytest
import torch

from exact_kernels import paged_attention, varlen_attention, write_kv_cache
from exact_kernels.attention import paged_tile_rows, paged_tiles
from exact_kernels.reference import paged_attention_ref, varlen_attention_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
# Max |out - ref| (outputs are O(1)). bf16/fp16: the inputs' own rounding plus, on
# CUDA, P rounded to the input dtype before the P @ V MMA (as FlashAttention does).
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}
# Max |grad - ref| / max(1, max |ref|).
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-3}
# Lengths crossing CUDA tiles (16-token query tiles, 32/64-key KV tiles) and 16-slot blocks.
CROSSING_LENS = [1, 15, 16, 17, 63, 64, 65, 200]


def _heads(device: str) -> tuple[int, int, int]:
    """(Hq, Hkv, D): small on CPU so the file stays fast; Qwen3-like on CUDA."""
    return (4, 2, 64) if device == "cpu" else (8, 2, 128)


def _cu(lens: list[int], device: str) -> torch.Tensor:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def _qkv(gen, T, hq, hkv, d, dtype, device):
    def draw(h):
        return torch.randn(T, h, d, generator=gen).to(dtype).to(device)
    return draw(hq), draw(hkv), draw(hkv)


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref).abs().max() / max(1.0, float(ref.abs().max())))


# ============================================================================ closeness

@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_varlen_forward_close(device, gen, dtype, head_dim):
    lens = [5, 1, 123, 0, 40]
    hq, hkv, _ = _heads(device)
    q, k, v = _qkv(gen, sum(lens), hq, hkv, head_dim, dtype, device)
    cu = _cu(lens, device)
    out = varlen_attention(q, k, v, cu, max(lens), head_dim ** -0.5)
    ref = varlen_attention_ref(q, k, v, cu, head_dim ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape
    assert float((out.float() - ref).abs().max()) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_varlen_backward_close(device, gen, dtype):
    lens = [37, 1, 70]
    hq, hkv, d = _heads(device)
    q, k, v = (t.requires_grad_() for t in _qkv(gen, sum(lens), hq, hkv, d, dtype, device))
    cu = _cu(lens, device)
    dout = torch.randn(q.shape, generator=gen).to(device)
    varlen_attention(q, k, v, cu, max(lens), d ** -0.5).backward(dout.to(dtype))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    varlen_attention_ref(q32, k32, v32, cu, d ** -0.5).backward(dout)
    for name, got, ref in (("dq", q.grad, q32.grad), ("dk", k.grad, k32.grad), ("dv", v.grad, v32.grad)):
        assert got.dtype == dtype
        assert _rel_err(got, ref) <= GRAD_TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_paged_forward_close(device, gen, dtype):
    seq_lens, q_lens = [1, 40, 17, 90], [1, 40, 3, 1]
    hq, hkv, d = _heads(device)
    bs = 16
    need = [(n + bs - 1) // bs for n in seq_lens]
    num_blocks = sum(need) + 2
    k_cache = torch.randn(num_blocks, bs, hkv, d, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(num_blocks, bs, hkv, d, generator=gen).to(dtype).to(device)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.zeros(len(seq_lens), max(need), dtype=torch.int32)
    for b, nb in enumerate(need):
        table[b, :nb] = torch.tensor([perm.pop() for _ in range(nb)])
    q = torch.randn(sum(q_lens), hq, d, generator=gen).to(dtype).to(device)
    args = (k_cache, v_cache, table.to(device), _cu(q_lens, device),
            torch.tensor(seq_lens, dtype=torch.int32, device=device), d ** -0.5)
    out = paged_attention(q, *args)
    ref = paged_attention_ref(q, *args)
    assert out.dtype == dtype
    assert float((out.float() - ref).abs().max()) <= TOL[dtype]


# ============================================================================ bitwise

def test_write_kv_cache_bitwise(device, gen):
    hkv, d, bs, nb = 2, 64, 16, 6
    k = torch.randn(20, hkv, d, generator=gen).bfloat16().to(device)
    v = torch.randn(20, hkv, d, generator=gen).bfloat16().to(device)
    slots = torch.randperm(nb * bs, generator=gen)[:20]
    slots[3] = -1  # padding token: skipped
    k_cache = torch.zeros(nb, bs, hkv, d, dtype=torch.bfloat16, device=device)
    v_cache = torch.zeros_like(k_cache)
    write_kv_cache(k, v, k_cache, v_cache, slots.to(device))
    keep = slots >= 0
    assert torch.equal(k_cache.view(-1, hkv, d)[slots[keep].to(device)], k[keep.to(device)])
    assert torch.equal(v_cache.view(-1, hkv, d)[slots[keep].to(device)], v[keep.to(device)])
    assert int((k_cache.view(-1, hkv, d).abs().sum((1, 2)) != 0).sum()) == int(keep.sum())


def _run_sampler(q, k, v, lens, block_size, rng: random.Random, gen, tiles: int = 0):
    """Serve every sequence through the paged path like a vLLM scheduler would: a
    shuffled physical block pool (unused slots hold NaN, so a stray read shows), a random
    prompt length per sequence prefilled in random chunks (extend), then decode token
    by token; each step batches a random subset of the live sequences in random
    order. KV of a step is written before attention reads it. Returns [T, Hq, D]
    with each row where the packed prefill has it. tiles > 0: every step runs over a
    tile list of that capacity (`paged_tiles`), as a CUDA graph of mixed steps does."""
    device = q.device
    B, hkv, d = len(lens), k.shape[1], k.shape[2]
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    need = [(n + block_size - 1) // block_size for n in lens]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.full((B, max(need)), -1, dtype=torch.int32)
    for b, nb in enumerate(need):
        table[b, :nb] = torch.tensor([perm.pop() for _ in range(nb)])
    table_dev = table.to(device)
    k_cache = torch.full((num_blocks, block_size, hkv, d), float("nan"), dtype=k.dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    prompt = [rng.randint(1, n) if n else 0 for n in lens]
    done = [0] * B
    out = torch.full_like(q, float("nan"))
    while True:
        live = [b for b in range(B) if done[b] < lens[b]]
        if not live:
            return out
        rng.shuffle(live)
        batch = live[: rng.randint(1, len(live))]
        rows, q_lens = [], []
        for b in batch:
            if done[b] < prompt[b]:
                n_new = rng.randint(1, prompt[b] - done[b])  # a chunk of the prompt
            else:
                n_new = 1  # decode
            rows.append(torch.arange(starts[b] + done[b], starts[b] + done[b] + n_new))
            q_lens.append(n_new)
        rows_cat = torch.cat(rows).to(device)
        slots = []
        for b, n_new in zip(batch, q_lens):
            for j in range(done[b], done[b] + n_new):
                slots.append(int(table[b, j // block_size]) * block_size + j % block_size)
        write_kv_cache(k[rows_cat], v[rows_cat], k_cache, v_cache, torch.tensor(slots, device=device))
        for b, n_new in zip(batch, q_lens):
            done[b] += n_new
        seq_lens = torch.tensor([done[b] for b in batch], dtype=torch.int32, device=device)
        if tiles:
            tok_m = paged_tile_rows(q.dtype, q.shape[1], hkv, d)
            tile_list = paged_tiles(torch.tensor(q_lens), tok_m, torch.empty(tiles, dtype=torch.int32, device=device))
            res = paged_attention(q[rows_cat], k_cache, v_cache, table_dev[batch], _cu(q_lens, device), seq_lens,
                                  d ** -0.5, max_q_len=max(q_lens), tiles=tile_list)
        else:
            res = paged_attention(q[rows_cat], k_cache, v_cache, table_dev[batch], _cu(q_lens, device), seq_lens,
                                  d ** -0.5)
        out[rows_cat] = res


@pytest.mark.parametrize("heads", [None, (6, 2)], ids=["gqa", "group3"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_paged_equals_prefill_bitwise(device, gen, dtype, block_size, heads):
    """Every query row through chunked prefill + decode on shuffled blocks equals the
    same row of one packed varlen prefill."""
    hq, hkv, d = _heads(device)
    if heads:
        hq, hkv = heads
    lens = CROSSING_LENS
    q, k, v = _qkv(gen, sum(lens), hq, hkv, d, dtype, device)
    cu = _cu(lens, device)
    with torch.no_grad():
        prefill = varlen_attention(q, k, v, cu, max(lens), d ** -0.5)
    for seed in range(2):
        served = _run_sampler(q, k, v, lens, block_size, random.Random(seed), gen)
        assert torch.equal(served, prefill), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_paged_tiles_equal_prefill_bitwise(dtype):
    """The tile-list grid (paged_tiles, the CUDA-graph form of mixed steps) gives every
    row the bits of one packed varlen prefill, whatever the step's mix."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    gen = torch.Generator().manual_seed(5)
    hq, hkv, d = _heads("cuda")
    lens = CROSSING_LENS
    q, k, v = _qkv(gen, sum(lens), hq, hkv, d, dtype, "cuda")
    with torch.no_grad():
        prefill = varlen_attention(q, k, v, _cu(lens, "cuda"), max(lens), d ** -0.5)
    for seed in range(2):
        served = _run_sampler(q, k, v, lens, 16, random.Random(seed), gen, tiles=64)
        assert torch.equal(served, prefill), f"seed {seed}"


_INTERPRETED = """
import os, random, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from exact_kernels.attention import _triton_fwd, paged_tile_rows, paged_tiles
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16):
    hq, hkv, d, page = 4, 2, 32, 8
    q_lens, seq_lens = [1, 0, 23, 1, 9, 40], [30, 5, 23, 17, 50, 40]
    T, B = sum(q_lens), len(q_lens)
    per = [-(-n // page) for n in seq_lens]
    blocks = torch.randperm(sum(per), generator=g).tolist()
    table = torch.zeros(B, max(per), dtype=torch.int32)
    for b, n in enumerate(per):
        table[b, :n] = torch.tensor([blocks.pop() for _ in range(n)])
    q = torch.randn(T, hq, d, generator=g).to(dtype)
    kc, vc = (torch.randn(sum(per), page, hkv, d, generator=g).to(dtype) for _ in range(2))
    cu = torch.tensor([0] + [sum(q_lens[:i + 1]) for i in range(B)], dtype=torch.int32)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    grid, _ = _triton_fwd("t", q, kc, vc, cu, sl, table, page, max(q_lens), d ** -0.5, paged=True, want_lse=False)
    tok_m = paged_tile_rows(dtype, hq, hkv, d)
    tiles = paged_tiles(torch.tensor(q_lens), tok_m, torch.empty(40, dtype=torch.int32))
    listed, _ = _triton_fwd("t", q, kc, vc, cu, sl, table, page, 1, d ** -0.5, paged=True, want_lse=False,
                            tiles=tiles)
    assert int((tiles >= 0).sum()) == sum(-(-n // tok_m) for n in q_lens), tiles
    assert torch.equal(listed, grid), (dtype, (listed - grid).abs().max())
    assert not torch.isnan(grid).any()
print("same bits")
"""


def test_paged_tiles_interpreted_same_bits(tmp_path):
    """CPU, the Triton interpreter: the attention kernel over a tile list (paged_tiles)
    gives the bits of its (query tile, sequence) grid on a mixed step with an empty
    sequence, decodes and prompt chunks; the list is longer than the step's tiles."""
    import subprocess
    import sys

    script = tmp_path / "interpreted.py"
    script.write_text(_INTERPRETED)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "same bits" in run.stdout, run.stdout + run.stderr


# ---------------------------------------------------------------------------- split-KV
# The keys of every row are cut into splits of attention._SPLIT keys at absolute
# positions; each split is one online softmax from a fresh state, the splits merged in
# order by one formula, whether one program walks them (prefill) or one program per
# split writes them out for a combine kernel (decode). The checks live in
# split_kv_checks.py, a script, so that on a CPU the Triton kernels run interpreted.

SPLIT_CHECKS = ["decode", "chunks", "reversed", "close", "backward"]


def _split_kv_check(check: str, device: str) -> str:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("split_kv_checks.py")
    run = subprocess.run([sys.executable, str(script), check, device], capture_output=True, text=True, timeout=900)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and lines and lines[-1].startswith("ok"), run.stdout + run.stderr
    return lines[-1]


@pytest.mark.slow
@pytest.mark.parametrize("check", SPLIT_CHECKS)
def test_split_kv_interpreted(check):
    """CPU, the Triton interpreter, sequences of 1, S-1, S, S+1 and 3S+5 keys (S = the
    split size), fp32 and fp16, all with torch.equal except `close` and `backward`:
    decode: split-parallel decode == serial prefill row by row (lse too); the serial
      decode kernel agrees; a row alone == in the batch == in a shuffled batch.
    chunks: random chunked prefill through the cache, serial / split-parallel (forced, so
      query tiles straddle split edges) / split-parallel over a tile list == prefill.
    reversed: the negative control: merging the splits last to first changes bits that
      the decode comparison sees (so that comparison can fail).
    close: prefill and split decode within TOL of the fp32 references.
    backward: the Triton backward on the merged lse within 1e-4 of the reference."""
    _split_kv_check(check, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("check", SPLIT_CHECKS)
def test_split_kv_cuda(check):
    """The same checks compiled for the GPU (Qwen3-like heads, bf16 too): the claim at
    the instruction level (the MMA layouts, exp2, the spelled-out fmas of the merge)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    _split_kv_check(check, "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_split_kv_sampler_equals_prefill_bitwise(device, gen, dtype):
    """Sequences across split edges served like the sampler (random chunks, then decode
    steps, which take the split-parallel kernel on CUDA) equal one packed prefill."""
    from exact_kernels.attention import _SPLIT

    hq, hkv, d = _heads(device)
    lens = [1, _SPLIT - 1, _SPLIT, _SPLIT + 1, 3 * _SPLIT + 5]
    q, k, v = _qkv(gen, sum(lens), hq, hkv, d, dtype, device)
    with torch.no_grad():
        prefill = varlen_attention(q, k, v, _cu(lens, device), max(lens), d ** -0.5)
    served = _run_sampler(q, k, v, lens, 16, random.Random(7), gen)
    assert torch.equal(served, prefill)


def test_paged_tiles_list():
    """The tile list: sequence order, (b << 16) | tile, -1 after; clear errors."""
    out = paged_tiles(torch.tensor([1, 0, 130, 64]), 64, torch.empty(8, dtype=torch.int32))
    assert out.tolist() == [0, 2 << 16, 2 << 16 | 1, 2 << 16 | 2, 3 << 16, -1, -1, -1]
    with pytest.raises(ValueError, match="5 tiles exceed the capacity 4"):
        paged_tiles(torch.tensor([1, 0, 130, 64]), 64, torch.empty(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="negative query length"):
        paged_tiles(torch.tensor([3, -1]), 64, torch.empty(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="1-D CPU integer tensor"):
        paged_tiles(torch.tensor([1.0]), 64, torch.empty(4, dtype=torch.int32))
    assert paged_tiles(torch.tensor([], dtype=torch.int64), 64, torch.empty(2, dtype=torch.int32)).tolist() == [-1, -1]
    rng = random.Random(0)
    for _ in range(50):
        q_lens = [rng.choice([0, 0, 1, 15, 16, 17, 100]) for _ in range(rng.randint(1, 40))]
        want = [b << 16 | t for b, q in enumerate(q_lens) for t in range(-(-q // 16))]
        got = paged_tiles(torch.tensor(q_lens), 16, torch.empty(len(want) + 3, dtype=torch.int32)).tolist()
        assert got == want + [-1] * 3, q_lens


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_varlen_packing_invariant(device, gen, dtype):
    """A sequence alone equals the same sequence packed with others in any order (and
    with empty sequences in the pack)."""
    hq, hkv, d = _heads(device)
    lens = [65, 1, 17, 130, 16]
    seqs = [_qkv(gen, n, hq, hkv, d, dtype, device) for n in lens]
    with torch.no_grad():
        alone = [varlen_attention(*s, _cu([n], device), n, d ** -0.5) for s, n in zip(seqs, lens)]
        rng = random.Random(0)
        for _ in range(3):
            order = list(range(len(lens)))
            rng.shuffle(order)
            pack_lens = []
            for i in order:
                pack_lens += [lens[i], 0]
            packed = [torch.cat([seqs[i][j] for i in order]) for j in range(3)]
            out = varlen_attention(*packed, _cu(pack_lens, device), max(lens), d ** -0.5)
            pos = 0
            for i in order:
                assert torch.equal(out[pos:pos + lens[i]], alone[i]), f"sequence {i} in order {order}"
                pos += lens[i]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_varlen_backward_run_to_run_bitwise(device, gen, dtype):
    hq, hkv, d = _heads(device)
    lens = [70, 1, 33]
    base = _qkv(gen, sum(lens), hq, hkv, d, dtype, device)
    dout = torch.randn(base[0].shape, generator=gen).to(dtype).to(device)
    cu = _cu(lens, device)
    grads = []
    for _ in range(2):
        q, k, v = (t.clone().requires_grad_() for t in base)
        varlen_attention(q, k, v, cu, max(lens), d ** -0.5).backward(dout)
        grads.append((q.grad, k.grad, v.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


# ============================================================================ validation

def _paged_args(device, **over):
    hq, hkv, d, bs = 4, 2, 64, 16
    a = dict(q=torch.zeros(3, hq, d, device=device), k_cache=torch.zeros(4, bs, hkv, d, device=device),
             v_cache=torch.zeros(4, bs, hkv, d, device=device),
             block_table=torch.zeros(2, 2, dtype=torch.int32, device=device),
             cu_seqlens_q=torch.tensor([0, 1, 3], dtype=torch.int32, device=device),
             seq_lens=torch.tensor([5, 20], dtype=torch.int32, device=device), scale=0.125)
    a.update(over)
    return a


def test_bad_input_raises(device):
    z = lambda *s, dt=torch.float32: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
    cu = torch.tensor([0, 3, 5], dtype=torch.int32, device=device)
    bad_varlen = [
        (dict(q=z(5, 4, 64, dt=torch.int32)), "dtype"),
        (dict(k=z(5, 2, 64, dt=torch.float16)), "dtypes differ"),
        (dict(k=z(5, 3, 64), v=z(5, 3, 64)), "not divisible"),
        (dict(q=z(5, 4, 48), k=z(5, 2, 48), v=z(5, 2, 48)), "head_dim 48"),
        (dict(cu=torch.tensor([0, 3, 6], dtype=torch.int32, device=device)), "cu_seqlens"),
        (dict(cu=cu.long()), "int32"),
        (dict(max_seqlen=2), "max_seqlen"),
        (dict(q=z(5, 64, 4).transpose(1, 2)), "contiguous"),
    ]
    for over, msg in bad_varlen:
        a = dict(q=z(5, 4, 64), k=z(5, 2, 64), v=z(5, 2, 64), cu=cu, max_seqlen=3)
        a.update(over)
        with pytest.raises(ValueError, match=msg) as e:
            varlen_attention(a["q"], a["k"], a["v"], a["cu"], a["max_seqlen"], 0.125)
        assert "varlen_attention" in str(e.value)
    bad_paged = [
        (dict(block_table=torch.zeros(2, 1, dtype=torch.int32, device=device)), "too short"),
        (dict(seq_lens=torch.tensor([5, 1], dtype=torch.int32, device=device)), "q_len 2 > seq_len 1"),
        (dict(block_table=torch.full((2, 2), 9, dtype=torch.int32, device=device)), "outside"),
        (dict(seq_lens=torch.tensor([5, 20], dtype=torch.int64, device=device)), "seq_lens"),
        (dict(q=torch.zeros(3, 4, 64, dtype=torch.bfloat16, device=device)), "dtypes differ"),
    ]
    for over, msg in bad_paged:
        with pytest.raises(ValueError, match=msg) as e:
            paged_attention(**_paged_args(device, **over))
        assert "paged_attention" in str(e.value)
    with pytest.raises(ValueError, match="write_kv_cache"):
        write_kv_cache(z(3, 2, 64), z(3, 2, 64), z(1, 2, 2, 64), z(1, 2, 2, 64),
                       torch.tensor([0, 1, 5], device=device))
