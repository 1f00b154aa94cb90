"""The FSDP2 trainer group as the loop uses it: real Ray actors, real gloo process
groups, a tiny checkpoint written to disk.

  - recompute logprobs: 1 rank == 2 ranks == the plain bf16 model (torch.equal), and
    the training forward equals the recompute bit for bit (the ratio is exactly 1);
  - a non-finite loss skips the step on every rank: weights unchanged, bitwise;
  - KL-to-reference and entropy terms run and enter the loss;
  - state() / load_state() restores a step exactly: the same next step gives the same
    weights, bitwise.
"""
import pytest
import torch

ray = pytest.importorskip("ray")

from rlhf_exact.models.checkpoint import load_model  # noqa: E402
from rlhf_exact.models.qwen3 import pack_sequences, packed_logprobs  # noqa: E402
from rlhf_exact.models.tiny import make_tiny_model_dir  # noqa: E402
from rlhf_exact.trainer.group import TrainerGroup  # noqa: E402
from rlhf_exact.trainer.plan import gather, plan, scatter  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

T = 0.7
SEQS = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14, 15]), ([3] * 9, [4, 5, 6]), ([40] * 20, [41] * 7)]
AGG = {"num_seqs": len(SEQS), "aggregation": "seq_mean_token_mean", "loss_scale_tokens": None}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("trainer") / "tiny", seed=1, std=0.05, num_hidden_layers=2)


def group(model_dir, world, **spec):
    return TrainerGroup(dict(model_path=str(model_dir), exact=True, temperature=T, lr=1e-2, **spec), world)


def per_rank(p, **extra):
    return scatter(p, lambda i: dict(prompt=SEQS[i][0], completion=SEQS[i][1], **{k: v(i) for k, v in extra.items()}))


def recompute(g, world, max_tokens=16):
    p = plan([len(a) + len(b) for a, b in SEQS], world, max_tokens)
    return p, gather(p, g.call("logprobs", per_rank(p)), len(SEQS))


def train(g, p, old, adv=lambda i: 1.0 - i, **extra):
    return g.call("train_minibatch", per_rank(p, old_logprobs=lambda i: old[i].tolist(), advantages=adv, **extra),
                  agg=AGG)


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
            p, got = recompute(g, world)
            for i in range(len(SEQS)):
                assert torch.equal(got[i], want[i]), (world, i)
            out = train(g, p, got)
            fwd = gather(p, [o["forward_logprobs"] for o in out], len(SEQS))
            for i in range(len(SEQS)):
                assert torch.equal(fwd[i], got[i]), ("training forward != recompute", world, i)
        finally:
            g.shutdown()


def test_nonfinite_loss_skips_step_and_kl_entropy_terms(model_dir):
    g = group(model_dir, 2, kl_coef=0.1, entropy_coef=0.01)
    try:
        before = g.call_same("full_weights", None)[0]
        p, old = recompute(g, 2)
        ref = gather(p, g.call("logprobs", per_rank(p), reference=True), len(SEQS))
        out = train(g, p, old, adv=lambda i: float("nan"), ref_logprobs=lambda i: ref[i].tolist())
        assert all(o["nonfinite"] for o in out)
        after = g.call_same("full_weights", None)[0]
        assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed weights"

        out = train(g, p, old, ref_logprobs=lambda i: ref[i].tolist())
        assert not any(o["nonfinite"] for o in out)
        entropy = sum(o["sums"]["entropy"] for o in out)
        assert entropy > 0  # an entropy per token was computed and summed
        assert sum(o["sums"]["kl"] for o in out) == 0.0  # policy == reference before the first update
        changed = g.call_same("full_weights", None)[0]
        assert any(not torch.equal(before[k], changed[k]) for k in before)
        out = train(g, p, old, ref_logprobs=lambda i: ref[i].tolist())
        assert sum(o["sums"]["kl"] for o in out) != 0.0  # after an update the policy left the reference
    finally:
        g.shutdown()


def test_state_round_trip_reproduces_the_next_step(model_dir):
    g = group(model_dir, 2)
    try:
        p, old = recompute(g, 2)
        train(g, p, old)
        g.call_same("end_step")
        tensors, meta = g.call_same("state")[0]
        train(g, p, old)
        g.call_same("end_step")
        want = g.call_same("full_weights", None)[0]
        g.call_same("load_state", tensors, meta)
        train(g, p, old)
        g.call_same("end_step")
        got = g.call_same("full_weights", None)[0]
        assert all(torch.equal(want[k], got[k]) for k in want)
    finally:
        g.shutdown()
