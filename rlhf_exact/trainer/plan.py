"""Pure planning for the trainer group: which rank computes which sequences, in which
micro-batches. (How token losses are weighted is rlhf_exact/algo/grpo.py's
`token_weights`; the loop passes the whole minibatch's counts to every rank.)

Deterministic functions of the sequence lengths and config only, so a resumed run
plans exactly what an uninterrupted one did. Bit-for-bit parity does not depend on the
plan (the kernels are batch-invariant); determinism of the *update* does, because the
order in which micro-batch gradients are summed is the plan's.
"""
from __future__ import annotations

from collections.abc import Sequence

def assign_ranks(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Sequence indices per rank, balancing tokens: each sequence in order goes to the
    rank with the fewest tokens so far (ties: lowest rank). lengths: total tokens
    (prompt + completion) of each sequence."""
    if world_size < 1:
        raise ValueError(f"assign_ranks: world_size must be >= 1, got {world_size}")
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i, n in enumerate(lengths):
        r = min(range(world_size), key=lambda k: (load[k], k))
        out[r].append(i)
        load[r] += n
    return out


def micro_batches(indices: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Greedy in-order packing of one rank's sequences into micro-batches of at most
    max_tokens tokens (a longer sequence gets a micro-batch of its own)."""
    if max_tokens < 1:
        raise ValueError(f"micro_batches: max_tokens must be >= 1, got {max_tokens}")
    out: list[list[int]] = []
    cur, size = [], 0
    for i in indices:
        if cur and size + lengths[i] > max_tokens:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += lengths[i]
    if cur:
        out.append(cur)
    return out


def plan(lengths: Sequence[int], world_size: int, max_tokens: int) -> list[list[list[int]]]:
    """plan[rank][micro] = sequence indices; every rank gets the same number of
    micro-batches (empty ones pad the short ranks: the worker runs a dummy of weight 0)."""
    per_rank = [micro_batches(ix, lengths, max_tokens) for ix in assign_ranks(lengths, world_size)]
    n = max(1, max(len(p) for p in per_rank))
    return [p + [[] for _ in range(n - len(p))] for p in per_rank]


def scatter(plan_: list[list[list[int]]], make) -> list[list[list]]:
    """Per rank, per micro-batch: make(i) for every sequence index i of the plan."""
    return [[[make(i) for i in micro] for micro in rank] for rank in plan_]


def gather(plan_: list[list[list[int]]], results: list[list[list]], n: int) -> list:
    """Inverse of `scatter` on the ranks' results: the n per-sequence values in order."""
    out = [None] * n
    for rank, rank_res in zip(plan_, results):
        for micro, res in zip(rank, rank_res):
            for i, v in zip(micro, res):
                out[i] = v
    return out
