"""The FSDP2 trainer group as the loop uses it: real Ray actors, real gloo process
groups, a tiny checkpoint written to disk.

  - recompute logprobs: 1 rank == 2 ranks == the plain bf16 model (torch.equal), and
    the training forward equals the recompute bit for bit (the ratio is exactly 1);
  - a non-finite loss skips the step on every rank, and every rank reports it: weights
    unchanged, bitwise; a token id outside the vocabulary is refused before any rank;
  - KL-to-reference and entropy terms run and enter the loss;
  - bf16 master weights (trainer.param_dtype): the forward is the plain bf16 model's;
  - state() / load_state() restores a step exactly: the same next step gives the same
    weights, bitwise.
"""
import dataclasses

import pytest
import torch

pytest.importorskip("ray")

from rlhf_exact.models.hf_io import load_model
from rlhf_exact.models.qwen3 import pack_sequences, packed_logprobs
from rlhf_exact.models.tiny import make_tiny_model_dir
from rlhf_exact.trainer.group import TrainerGroup
from rlhf_exact.trainer.worker import TrainerSpec
from rlhf_exact.types import LossNorm, TrainSeq

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

T = 0.7
SEQS = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14, 15]), ([3] * 9, [4, 5, 6]), ([40] * 20, [41] * 7)]
NORM = LossNorm(len(SEQS), "seq_mean_token_mean")
MAX_TOKENS = 16  # micro-batch tokens: the four sequences take three micro-batches on one rank


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("trainer") / "tiny", seed=1, std=0.05, num_hidden_layers=2)


def group(model_dir, world, **spec):
    return TrainerGroup(TrainerSpec(model_path=str(model_dir), exact=True, temperature=T, lr=1e-2, **spec), world,
                        MAX_TOKENS)


def seqs(**extra):
    return [TrainSeq(torch.tensor(a), torch.tensor(b), **{k: v(i) for k, v in extra.items()})
            for i, (a, b) in enumerate(SEQS)]


def recompute(g, reference=False):
    return g.logprobs(seqs(), reference=reference)


def train(g, old, adv=lambda i: 1.0 - i, **extra):
    return g.train_minibatch(seqs(old_logprobs=lambda i: old[i], advantage=adv, **extra), NORM)


def test_recompute_one_vs_two_ranks_and_ratio_one(model_dir):
    plain, _ = load_model(model_dir, dtype=torch.bfloat16)
    batch = pack_sequences([a + b for a, b in SEQS])
    with torch.no_grad():
        lp = packed_logprobs(plain, batch, T)
    starts = batch.cu_seqlens.tolist()
    want = [lp[s + len(a) - 1: s + len(a) - 1 + len(b)] for s, (a, b) in zip(starts, SEQS)]
    for world in (1, 2):
        g = group(model_dir, world)
        try:
            got = recompute(g)
            for i in range(len(SEQS)):
                assert torch.equal(got[i], want[i]), (world, i)
            fwd = train(g, got).forward_logprobs
            for i in range(len(SEQS)):
                assert torch.equal(fwd[i], got[i]), ("training forward != recompute", world, i)
        finally:
            g.shutdown()


def test_bf16_master_weights(model_dir):
    """trainer.param_dtype=bfloat16: the masters are the bf16 weights themselves, so the
    forward is the plain bf16 model's, bit for bit, and a step updates them in bf16."""
    plain, _ = load_model(model_dir, dtype=torch.bfloat16)
    batch = pack_sequences([a + b for a, b in SEQS])
    with torch.no_grad():
        lp = packed_logprobs(plain, batch, T)
    starts = batch.cu_seqlens.tolist()
    g = group(model_dir, 1, param_dtype="bfloat16")
    try:
        got = recompute(g)
        for i, (s, (a, b)) in enumerate(zip(starts, SEQS)):
            assert torch.equal(got[i], lp[s + len(a) - 1: s + len(a) - 1 + len(b)]), i
        before = g.full_weights(None)
        assert all(t.dtype == torch.bfloat16 for t in before.values())
        assert not train(g, got).nonfinite
        after = g.full_weights(None)
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        g.shutdown()


def test_nonfinite_loss_skips_step_and_kl_entropy_terms(model_dir):
    g = group(model_dir, 2, kl_coef=0.1, entropy_coef=0.01)
    try:
        before = g.full_weights(None)
        old = recompute(g)
        bad = seqs(old_logprobs=lambda i: old[i])
        bad[2] = dataclasses.replace(bad[2], completion=torch.tensor([4, 10 ** 6, 6]))
        with pytest.raises(ValueError, match=r"sequence 2 \(completion\), position 1: token id 1000000 outside"):
            g.train_minibatch(bad, NORM)  # refused before any rank: the weights checks below cover it
        ref = recompute(g, reference=True)
        out = train(g, old, adv=lambda i: float("nan"), ref_logprobs=lambda i: ref[i])
        assert out.nonfinite_ranks == 2, "every rank reports the skipped step"
        after = g.full_weights(None)
        assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed weights"

        out = train(g, old, ref_logprobs=lambda i: ref[i])
        assert out.nonfinite_ranks == 0
        assert out.entropy > 0  # an entropy per token was computed and summed
        assert out.kl == 0.0  # policy == reference before the first update
        changed = g.full_weights(None)
        assert any(not torch.equal(before[k], changed[k]) for k in before)
        out = train(g, old, ref_logprobs=lambda i: ref[i])
        assert out.kl != 0.0  # after an update the policy left the reference
    finally:
        g.shutdown()


def test_state_round_trip_reproduces_the_next_step(model_dir):
    g = group(model_dir, 2)
    try:
        old = recompute(g)
        train(g, old)
        g.end_step()
        tensors, meta = g.state()
        train(g, old)
        g.end_step()
        want = g.full_weights(None)
        g.load_state(tensors, meta)
        train(g, old)
        g.end_step()
        got = g.full_weights(None)
        assert all(torch.equal(want[k], got[k]) for k in want)
    finally:
        g.shutdown()


def test_loss_mask_selects_tokens(model_dir):
    """A multi-turn sequence's loss mask: the trainer returns and trains on the masked
    completion tokens only, with the same bits as the unmasked recompute at those tokens."""
    masks = [torch.tensor([True, False, False, True]), torch.tensor([True, True]), torch.tensor([False, True, True]),
             torch.tensor([True, True, False, False, False, True, True])]
    g = group(model_dir, 2)
    try:
        full = recompute(g)
        masked = g.logprobs(seqs(loss_mask=lambda i: masks[i]))
        for i in range(len(SEQS)):
            assert torch.equal(masked[i], full[i][masks[i]]), i
        out = g.train_minibatch(seqs(old_logprobs=lambda i: masked[i], advantage=lambda i: 1.0 - i,
                                     loss_mask=lambda i: masks[i]), NORM)
        assert out.tokens == float(sum(int(m.sum()) for m in masks))
        for i in range(len(SEQS)):
            assert torch.equal(out.forward_logprobs[i], masked[i]), i
    finally:
        g.shutdown()
