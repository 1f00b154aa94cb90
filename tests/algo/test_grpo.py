"""GRPO-family pieces against HAND-COMPUTED values (the expected numbers are worked
out in the comments, never by calling the function under test).

    .venv/bin/python -m pytest -q tests/algo
"""
import math

import pytest
import torch

from rlhf_exact.algo import (aggregate, entropy_bonus, equal_reward_groups, group_advantages, kl_penalty,
                             minibatches, parity_metrics, policy_loss, tis_weights)

F64 = torch.float64


# ---------------------------------------------------------------- advantages

def test_grpo_advantages_group_of_two():
    # group [1, 0]: mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = 1/sqrt(2)
    # -> (+-0.5) * sqrt(2) = +-1/sqrt(2); group [0, 1] mirrored.
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64), group_size=2, eps=0.0)
    s = 1 / math.sqrt(2)
    assert a.tolist() == pytest.approx([s, -s, -s, s], rel=1e-12)


def test_grpo_advantages_group_of_four_and_eps():
    # [3, 1, 0, 0]: mean 1, deviations [2, 0, -1, -1], sum of squares 6,
    # unbiased var 6/3 = 2, std sqrt(2) -> [sqrt2, 0, -1/sqrt2, -1/sqrt2]
    r = torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=F64)
    s2 = math.sqrt(2)
    assert group_advantages(r, 4, eps=0.0).tolist() == pytest.approx([s2, 0.0, -1 / s2, -1 / s2], rel=1e-12)
    # with eps = 0.5: divide by sqrt2 + 0.5 = 1.9142135...
    d = s2 + 0.5
    assert group_advantages(r, 4, eps=0.5).tolist() == pytest.approx([2 / d, 0.0, -1 / d, -1 / d], rel=1e-12)


def test_dr_grpo_advantages_are_centered_only():
    r = torch.tensor([3.0, 1.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    assert group_advantages(r, 4, normalize_std=False).tolist() == [2.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]


def test_equal_group_gets_exactly_zero_advantage():
    a = group_advantages(torch.tensor([0.5, 0.5, 0.5]), 3)
    assert a.tolist() == [0.0, 0.0, 0.0]


def test_advantage_bad_arguments():
    with pytest.raises(ValueError, match=r"B=5.*group_size=2"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.zeros(4), 1)
    assert group_advantages(torch.tensor([1.0, 2.0]), 1, normalize_std=False).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        equal_reward_groups(torch.zeros(4), 0)


def test_equal_reward_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0])
    assert equal_reward_groups(r, 2).tolist() == [True, False, True]
    with pytest.raises(ValueError, match=r"B=6.*group_size=4"):
        equal_reward_groups(r, 4)


def test_samples_without_reward_are_left_out_of_their_group():
    nan = math.nan
    # group [3, nan, 1, 0, 0] = [3, 1, 0, 0] of the group-of-four test plus a dropped one:
    # the same advantages [sqrt2, 0, -1/sqrt2, -1/sqrt2], NaN for the dropped sample.
    # group [nan, 2, nan, nan, nan]: one member left, mean 2, deviation 0, std 0 -> 0 / eps = 0.
    # group [1, 1, 1, 1, nan]: all equal -> 0.
    r = torch.tensor([3.0, nan, 1.0, 0.0, 0.0, nan, 2.0, nan, nan, nan, 1.0, 1.0, 1.0, 1.0, nan], dtype=F64)
    s2 = math.sqrt(2)
    a = group_advantages(r[:5], 5, eps=0.0)
    assert a[[0, 2, 3, 4]].tolist() == pytest.approx([s2, 0.0, -1 / s2, -1 / s2], rel=1e-12) and math.isnan(a[1])
    a = group_advantages(r, 5)[5:]
    want = [nan, 0.0, nan, nan, nan, 0.0, 0.0, 0.0, 0.0, nan]
    assert [math.isnan(x) for x in a.tolist()] == [math.isnan(x) for x in want]
    assert [x for x in a.tolist() if not math.isnan(x)] == [0.0] * 5
    # Dr. GRPO: centered only; [3, 1, 0, 0] -> [2, 0, -1, -1]
    d = group_advantages(r[:5], 5, normalize_std=False)
    assert d[[0, 2, 3, 4]].tolist() == [2.0, 0.0, -1.0, -1.0] and math.isnan(d[1])
    # without NaN the result is the plain path's, bit for bit
    plain = torch.tensor([3.0, 1.0, 0.0, 0.0])
    assert torch.equal(group_advantages(plain, 4), group_advantages(torch.cat([plain, torch.tensor([nan] * 4)]),
                                                                    4)[:4])
    assert equal_reward_groups(r, 5).tolist() == [False, True, True]
    assert equal_reward_groups(torch.tensor([nan, nan, 0.0, 1.0]), 2).tolist() == [True, False]


# ---------------------------------------------------------------- policy loss
# Five tokens, eps_low 0.2, eps_high 0.28 (clip range [0.8, 1.28]), old logprobs 0:
#   token  seq  A   ratio  unclipped -A*r  clipped -A*clip(r)  max (loss)  clipped active?
#   a      0   +1   1.5    -1.5            -1.28               -1.28       yes (high)
#   b      0   +1   0.5    -0.5            -0.8                -0.5        no
#   c      0   -1   0.5    +0.5            +0.8                +0.8        yes (low)
#   d      1   -1   1.5    +1.5            +1.28               +1.5        no
#   e      1   +2   1.0    -2.0            -2.0                -2.0        no
# sum = -1.48; seq 0 sum = -0.98 (3 tokens), seq 1 sum = -0.5 (2 tokens)

def _five_tokens():
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.0], dtype=F64)
    logprobs = ratio.log().requires_grad_(True)
    old = torch.zeros(5, dtype=F64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0], dtype=F64)
    seq_ids = torch.tensor([0, 0, 0, 1, 1])
    return logprobs, old, adv, seq_ids


@pytest.mark.parametrize("aggregation, scale, expected", [
    ("token_mean", None, -1.48 / 5),                                # -0.296
    ("token_mean", 10, -1.48 / 10),                                 # micro-batch of a 10-token minibatch
    ("seq_mean_token_mean", None, (-0.98 / 3 + -0.5 / 2) / 2),      # -0.288333...
    ("seq_mean_token_sum", 4, (-0.98 / 4 + -0.5 / 4) / 2),     # -0.185
])
def test_policy_loss_aggregations(aggregation, scale, expected):
    lp, old, adv, sid = _five_tokens()
    loss, m = policy_loss(lp, old, adv, sid, num_seqs=2, clip_eps_low=0.2, clip_eps_high=0.28,
                          aggregation=aggregation, loss_scale_tokens=scale)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert m["clip_frac"] == pytest.approx(0.4)
    assert m["clip_frac_low"] == pytest.approx(0.2)
    assert m["clip_frac_high"] == pytest.approx(0.2)
    assert m["ratio_min"] == pytest.approx(0.5)
    assert m["ratio_max"] == pytest.approx(1.5)
    assert m["ratio_mean"] == pytest.approx(1.0)  # (1.5 + .5 + .5 + 1.5 + 1) / 5
    assert all(isinstance(v, float) for v in m.values())


def test_policy_loss_gradient_is_zero_on_clipped_tokens():
    # token_mean, w = 1/5; d l_t / d logp_t = -A * ratio on unclipped tokens, 0 on clipped:
    # a: 0, b: -0.5/5 = -0.1, c: 0, d: +1.5/5 = 0.3, e: -2/5 = -0.4
    lp, old, adv, sid = _five_tokens()
    loss, _ = policy_loss(lp, old, adv, sid, 2, 0.2, 0.28, "token_mean")
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([0.0, -0.1, 0.0, 0.3, -0.4], rel=1e-12, abs=1e-15)


def test_policy_loss_symmetric_clip_and_tis_weights():
    lp, old, adv, sid = _five_tokens()
    # symmetric eps 0.2: token a now clipped at 1.2 -> -1.2, token d: max(1.5, 1.2) = 1.5; sum -1.40
    loss, _ = policy_loss(lp, old, adv, sid, 2, 0.2, 0.2, "token_mean")
    assert loss.item() == pytest.approx(-1.40 / 5, rel=1e-12)
    # TIS weights [2, 1, 1, 1, 0.5] multiply the per-token losses:
    # [-2.56, -0.5, 0.8, 1.5, -1.0], sum -1.76
    w = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5], dtype=F64)
    loss, _ = policy_loss(lp, old, adv, sid, 2, 0.2, 0.28, "token_mean", tis_weights=w)
    assert loss.item() == pytest.approx(-1.76 / 5, rel=1e-12)


def test_policy_loss_bad_arguments():
    lp, old, adv, sid = _five_tokens()
    with pytest.raises(ValueError, match="unknown aggregation 'mean'.*token_mean"):
        policy_loss(lp, old, adv, sid, 2, 0.2, 0.28, "mean")
    with pytest.raises(ValueError, match="needs loss_scale_tokens"):
        policy_loss(lp, old, adv, sid, 2, 0.2, 0.28, "seq_mean_token_sum")
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(4,\)"):
        policy_loss(lp, old[:4], adv, sid, 2, 0.2, 0.28, "token_mean")
    with pytest.raises(ValueError, match="int64"):
        policy_loss(lp, old, adv, sid.int(), 2, 0.2, 0.28, "token_mean")
    with pytest.raises(ValueError, match="clip_eps_low"):
        policy_loss(lp, old, adv, sid, 2, 1.0, 0.28, "token_mean")
    with pytest.raises(ValueError, match="num_seqs must be >= 1"):
        policy_loss(lp, old, adv, sid, 0, 0.2, 0.28, "seq_mean_token_mean")


def test_entropy_bonus_and_aggregate():
    # entropies [1, 2, 3 | 4, 6]: token_mean 16/5; seq means 2 and 5 -> 3.5
    ent = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0], dtype=F64)
    sid = torch.tensor([0, 0, 0, 1, 1])
    assert entropy_bonus(ent, sid, 2, "token_mean").item() == pytest.approx(3.2, rel=1e-12)
    assert entropy_bonus(ent, sid, 2, "seq_mean_token_mean").item() == pytest.approx(3.5, rel=1e-12)
    # micro-batch holding one of 4 sequences of a minibatch: seq mean 5 / 4
    assert aggregate(ent[3:], sid[3:] - 1, 4, "seq_mean_token_mean").item() == pytest.approx(1.25, rel=1e-12)


# ---------------------------------------------------------------- KL, TIS

def test_kl_estimators():
    # d = logp - logq: d = 1 -> k1 1, k2 0.5, k3 e^-1 + 1 - 1 = 0.36787944
    #                  d = -1 -> k1 -1, k2 0.5, k3 e^1 - 1 - 1 = 0.71828183
    #                  d = 0 -> 0, 0, 0
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=F64)
    ref = torch.tensor([-2.0, -1.0, -0.5], dtype=F64)
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([0.36787944117, 0.71828182846, 0.0], rel=1e-10)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'.*k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_kl_k3_gradient_flows_only_through_policy():
    # d k3 / d logp = -e^{-d} + 1: at d = 1 -> 1 - 0.36787944 = 0.63212056
    logp = torch.tensor([-1.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-2.0], dtype=F64, requires_grad=True)
    kl_penalty(logp, ref, "k3").sum().backward()
    assert logp.grad.item() == pytest.approx(0.63212055883, rel=1e-10)
    assert ref.grad is None


def test_tis_weights():
    # exp(-1 - -1.5) = e^0.5 = 1.6487 -> capped at 1.5; exp(-2 - -1) = e^-1 = 0.36787944; exp(0) = 1
    trainer = torch.tensor([-1.0, -2.0, -0.3], requires_grad=True)
    sampler = torch.tensor([-1.5, -1.0, -0.3])
    w = tis_weights(trainer, sampler, cap=1.5)
    assert w.tolist() == pytest.approx([1.5, 0.36787944, 1.0], rel=1e-6)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap must be > 0"):
        tis_weights(trainer, sampler, cap=0.0)


# ---------------------------------------------------------------- parity metrics

def test_parity_metrics_exact_mode_values():
    lp = torch.tensor([-1.0, -0.0, -3.25])
    m = parity_metrics(lp, lp.clone())
    assert m == {"parity/kl": 0.0, "parity/logprob_abs_diff_max": 0.0, "parity/logprob_abs_diff_mean": 0.0,
                 "parity/tokens_bitwise_equal_frac": 1.0, "parity/ratio_min": 1.0, "parity/ratio_max": 1.0}
    assert all(type(v) is float for v in m.values())


def test_parity_metrics_hand_values():
    # r = trainer - sampler = [0, -0.5, 0.25]; ratio = [1, e^-0.5, e^0.25] = [1, 0.60653066, 1.28402542]
    # k3 = ratio - r - 1 = [0, 0.10653066, 0.03402542] -> mean 0.04685203
    sampler = torch.tensor([-1.0, -2.0, -0.5])
    trainer = torch.tensor([-1.0, -2.5, -0.25])
    m = parity_metrics(sampler, trainer)
    # exact in fp32: the differences, their max and mean (0.75 / 3) and the equal count
    assert m["parity/logprob_abs_diff_max"] == 0.5
    assert m["parity/logprob_abs_diff_mean"] == 0.25
    assert m["parity/tokens_bitwise_equal_frac"] == 1 / 3
    # exp is rounded: closeness to the hand values at fp32 precision
    assert m["parity/kl"] == pytest.approx(0.04685203, rel=1e-5)
    assert m["parity/ratio_min"] == pytest.approx(0.60653066, rel=1e-6)
    assert m["parity/ratio_max"] == pytest.approx(1.28402542, rel=1e-6)


def test_parity_metrics_signed_zero_and_nan():
    # -0.0 vs +0.0 is equal (torch.eq, as torch.equal in the numerics contract); NaN never is
    m = parity_metrics(torch.tensor([-0.0, float("nan")]), torch.tensor([0.0, float("nan")]))
    assert m["parity/tokens_bitwise_equal_frac"] == 0.5
    assert math.isnan(m["parity/kl"])


def test_parity_metrics_bad_arguments():
    with pytest.raises(ValueError, match="fp32"):
        parity_metrics(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        parity_metrics(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="no tokens"):
        parity_metrics(torch.zeros(0), torch.zeros(0))


# ---------------------------------------------------------------- minibatches

def test_minibatches_keep_groups_whole():
    mb = [t.tolist() for t in minibatches(8, 2, group_size=2)]
    assert mb == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # 3 groups in 2 minibatches: the first takes the extra group
    assert [t.tolist() for t in minibatches(6, 2, group_size=2)] == [[0, 1, 2, 3], [4, 5]]
    # fewer groups than minibatches: split sequences
    assert [t.tolist() for t in minibatches(4, 4, group_size=2)] == [[0], [1], [2], [3]]
    assert all(t.dtype == torch.long for t in minibatches(4, 1))


def test_minibatches_shuffled_groups_are_deterministic_and_whole():
    a = [t.tolist() for t in minibatches(12, 3, group_size=4, shuffle_seed=7)]
    assert a == [t.tolist() for t in minibatches(12, 3, group_size=4, shuffle_seed=7)]
    assert sorted(sum(a, [])) == list(range(12))
    for chunk in a:  # each minibatch is one whole group: 4 consecutive ids starting at a multiple of 4
        assert chunk[0] % 4 == 0 and chunk == list(range(chunk[0], chunk[0] + 4))


def test_minibatches_bad_arguments():
    with pytest.raises(ValueError, match=r"num_seqs=7.*group_size=2"):
        minibatches(7, 1, group_size=2)
    with pytest.raises(ValueError, match=r"num_minibatches=9.*num_seqs=8"):
        minibatches(8, 9)
