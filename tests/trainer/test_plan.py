"""The trainer's micro-batch plan (pure functions; hand-checked values)."""
import pytest

from rlhf_exact.trainer.plan import assign_ranks, gather, micro_batches, plan, scatter


def test_assign_ranks_balances_tokens_in_order():
    # 10 -> r0 (0,0 tie: lowest), 4 -> r1, 3 -> r1 (4 < 10), 5 -> r1 (7 < 10), 1 -> r0 (10 < 12)
    assert assign_ranks([10, 4, 3, 5, 1], 2) == [[0, 4], [1, 2, 3]]
    assert assign_ranks([1, 2, 3], 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="world_size"):
        assign_ranks([1], 0)


def test_micro_batches_greedy_and_oversized():
    lengths = [3, 4, 9, 2, 2]
    assert micro_batches([0, 1, 2, 3, 4], lengths, 8) == [[0, 1], [2], [3, 4]]
    assert micro_batches([], lengths, 8) == []
    with pytest.raises(ValueError, match="max_tokens"):
        micro_batches([0], lengths, 0)


def test_plan_pads_ranks_to_equal_micro_batch_counts():
    p = plan([5, 5, 5, 1], world_size=2, max_tokens=5)
    # r0: seqs 0, 2 ; r1: seqs 1, 3 -> r0 [[0],[2]], r1 [[1],[3]]
    assert p == [[[0], [2]], [[1], [3]]]
    p = plan([5, 1], world_size=3, max_tokens=8)
    assert p == [[[0]], [[1]], [[]]]  # rank 2 gets an empty slot (the worker runs a dummy)
    assert all(len(r) == len(p[0]) for r in p)


def test_scatter_gather_round_trip():
    p = plan([5, 5, 5, 1], world_size=2, max_tokens=5)  # [[[0], [2]], [[1], [3]]]
    per_rank = scatter(p, lambda i: 10 * i)
    assert per_rank == [[[0], [20]], [[10], [30]]]
    assert gather(p, per_rank, 4) == [0, 10, 20, 30]
