"""The paged generation loop's bookkeeping: block allocation and reuse, the token
budget, chunked prefill, joining and leaving, stop tokens, seeded sampling.
(Its logprobs against the trainer's are in test_parity.py.)

    python -m pytest tests/models/test_generate.py -q
"""
import pytest
import torch

from rlhf_exact.models.hf_io import load_model

from .conftest import random_sequences
from .generate import BlockAllocator, GenerationRequest, generate


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir, dtype=torch.bfloat16)[0]


def test_block_allocator_fifo_reuse():
    alloc = BlockAllocator(3)
    assert [alloc.allocate() for _ in range(3)] == [0, 1, 2] and alloc.num_free == 0
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        alloc.allocate()
    alloc.free([1, 0])
    assert alloc.allocate() == 1 and alloc.num_free == 1


def test_schedule_budget_chunks_joins_and_leaves(model):
    prompts = random_sequences(4, [40, 3, 20, 1], seed=1)
    reqs = [GenerationRequest(p, max_new_tokens=n, arrival=a) for p, n, a in zip(prompts, [3, 10, 2, 5], [0, 0, 1, 6])]
    steps = []
    res = generate(model, reqs, max_num_seqs=2, max_num_batched_tokens=16, num_blocks=8,
                   on_step=lambda step, sched: steps.append((step, sched)))
    for _, sched in steps:
        assert sum(n for _, n in sched) <= 16 and len(sched) <= 2
    prefill_0 = [n for _, sched in steps for i, n in sched if i == 0][:3]
    assert prefill_0 == [16, 16, 8]  # the 40-token prompt is prefilled in budget-sized chunks
    first_step = {i: min(s for s, sched in steps if any(j == i for j, _ in sched)) for i in range(4)}
    last_step = {i: max(s for s, sched in steps if any(j == i for j, _ in sched)) for i in range(4)}
    assert first_step[3] >= 6  # joins no earlier than its arrival
    assert first_step[2] > last_step[0]  # waits for a free slot: joins after request 0 leaves
    assert [len(r.token_ids) for r in res] == [3, 10, 2, 5]
    assert all(r.finish_reason == "length" and r.logprobs.dtype == torch.float32 for r in res)
    assert all(r.prompt_logprobs is None for r in res)


def test_stop_token_and_block_reuse(model):
    prompt = random_sequences(1, [5], seed=2)[0]
    (free_run,) = generate(model, [GenerationRequest(prompt, max_new_tokens=12)])
    stop = free_run.token_ids[3]
    first = free_run.token_ids.index(stop)
    reqs = [GenerationRequest(prompt, max_new_tokens=12, stop_token_ids=[stop]),
            GenerationRequest(prompt, max_new_tokens=12, arrival=1)]
    # 2 blocks: the second request can only run in the blocks the first one returned
    a, b = generate(model, reqs, max_num_seqs=2, num_blocks=2)
    assert a.finish_reason == "stop" and a.token_ids == free_run.token_ids[:first + 1]
    assert b.token_ids == free_run.token_ids and torch.equal(b.logprobs, free_run.logprobs)


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    prompt = random_sequences(1, [4], seed=3)[0]
    reqs = [GenerationRequest(prompt, max_new_tokens=16, seed=s) for s in (1, 1, 2)]
    a, b, c = generate(model, reqs, greedy=False, temperature=1.5)
    assert a.token_ids == b.token_ids and torch.equal(a.logprobs, b.logprobs)
    assert a.token_ids != c.token_ids


def test_bad_requests(model):
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate(model, [GenerationRequest([], max_new_tokens=2)])
    with pytest.raises(ValueError, match="num_blocks=1 cannot hold"):
        generate(model, [GenerationRequest([5] * 20, max_new_tokens=2)], num_blocks=1)
    with pytest.raises(ValueError, match="must be positive"):
        generate(model, [GenerationRequest([5], max_new_tokens=2)], max_num_batched_tokens=0)
