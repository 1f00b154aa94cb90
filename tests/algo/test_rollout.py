"""algo/rollout.py with hand-computed values: scoring (GRPO advantages, the equal-reward
filter), the minibatch split, the loss normaliser, the importance-ratio range, and the
step metrics (with the reward's per-source breakdown).

    python -m pytest tests/algo/test_rollout.py -q
"""
import dataclasses
import math

import pytest
import torch

from rlhf_exact.algo.rollout import (loss_norm, minibatch_split, ratio_range, request_seed, reward_source_metrics,
                                     rollout_metrics, score, update_metrics)
from rlhf_exact.types import Episode, LossNorm, MinibatchResult


def ep(group, completion_len, prompt_len=3):
    return Episode(group=group, prompt=torch.arange(prompt_len), completion=torch.arange(completion_len),
                   sampler_logprobs=torch.zeros(completion_len), finish_reason="length")


def test_request_seed_values():
    assert request_seed(0, 0, 0, 4) == 0
    assert request_seed(0, 1, 2, 4) == (65_537 + 2) * 4  # (0 * 1_000_003 + 1) * 65_537 + 2, times g
    assert request_seed(1, 0, 0, 2) == 1_000_003 * 65_537 * 2 % (2 ** 31 - 2)
    seeds = {request_seed(0, s, p, 8) for s in range(5) for p in range(5)}
    assert len(seeds) == 25  # distinct per (step, prompt)


def test_score_grpo_and_filter():
    eps = [ep(0, 2), ep(0, 2), ep(1, 2), ep(1, 2)]
    out = score(eps, [1.0, 0.0, 0.5, 0.5], [None, None, "boom", None], group_size=2, normalize_std=False,
                filter_equal_reward_groups=True)
    assert [e.reward for e in out][:2] == [1.0, 0.0] and math.isnan(out[2].reward) and out[3].reward == 0.5
    adv = [e.advantage for e in out]  # r - group mean (Dr. GRPO); episode 2 has no reward: left out
    assert adv[:2] == [0.5, -0.5] and math.isnan(adv[2]) and adv[3] == 0.0
    assert [e.kept for e in out] == [True, True, False, False]  # group 1: one reward left, all equal
    assert [e.reward_error for e in out] == [None, None, "boom", None]
    out = score(eps, [1.0, 0.0, 0.5, 0.5], [None, None, "boom", None], group_size=2, normalize_std=False)
    assert [e.kept for e in out] == [True, True, False, True]  # no filter: only the failed one is dropped
    assert eps[0].reward == 0.0  # the input records are not changed

    out = score(eps, [1.0, 0.0, 0.5, 0.5], [None] * 4, group_size=2)  # GRPO: / (unbiased std + 1e-6)
    std = math.sqrt(0.5)  # of (1, 0): ((0.5^2 + 0.5^2) / (2 - 1)) ** 0.5
    assert out[0].advantage == pytest.approx(0.5 / (std + 1e-6), rel=1e-6)
    assert all(e.kept for e in out)


def test_minibatch_split_keeps_groups_whole():
    eps = [ep(g, 1) for g in range(3) for _ in range(2)]
    assert minibatch_split(eps, 2, 2) == [[0, 1, 2, 3], [4, 5]]
    dropped = [e if e.group != 1 else Episode(**{**e.__dict__, "kept": False}) for e in eps]
    assert minibatch_split(dropped, 2, 5) == [[0, 1], [4, 5]]  # at most one minibatch per kept group
    assert minibatch_split([Episode(**{**e.__dict__, "kept": False}) for e in eps], 2, 1) == []
    # an episode without a reward leaves its group short; the group stays whole otherwise
    failed = [Episode(**{**e.__dict__, "kept": i != 1}) for i, e in enumerate(eps)]
    assert minibatch_split(failed, 2, 2) == [[0, 2, 3], [4, 5]]
    assert minibatch_split(failed, 2, 3) == [[0], [2, 3], [4, 5]]


def test_loss_norm():
    eps = [ep(0, 2), ep(0, 5)]
    assert loss_norm(eps, "token_mean", 12) == LossNorm(2, "token_mean", 7)
    assert loss_norm(eps, "seq_mean_token_sum", 12) == LossNorm(2, "seq_mean_token_sum", 12)


def test_ratio_range():
    a = [torch.tensor([0.0, -1.0]), torch.tensor([-2.0])]
    assert ratio_range(a, [t.clone() for t in a]) == (1.0, 1.0)
    lo, hi = ratio_range([torch.tensor([0.0, math.log(2.0)])], [torch.tensor([math.log(4.0), 0.0])])
    assert lo == pytest.approx(0.25) and hi == pytest.approx(2.0)


def test_rollout_metrics():
    eps = score([ep(0, 2), ep(0, 4), ep(1, 6), ep(1, 8)], [1.0, 3.0, 2.0, 2.0], [None, "x", None, None], 2,
                filter_equal_reward_groups=True)
    m = rollout_metrics(eps)
    # rewards with a value: 1, 2, 2 -> mean 5/3, population std sqrt(((2/3)^2 + 2 (1/3)^2) / 3) = sqrt(2/9);
    # both groups have all-equal rewards left (group 0 only its 1.0) -> none kept
    assert m == {"reward/mean": float(torch.tensor(5 / 3)), "reward/std": float(torch.tensor(2 / 9).sqrt()),
                 "reward/errors": 1.0, "response_length/mean": 5.0, "response_length/max": 8.0,
                 "response_length/min": 2.0, "train/groups_kept": 0.0, "train/groups": 2.0}
    m = rollout_metrics(score([ep(0, 2), ep(0, 4), ep(1, 6), ep(1, 8)], [1.0, 3.0, 2.0, 0.0], [None] * 4, 2))
    assert m["reward/mean"] == 1.5 and m["train/groups_kept"] == 2.0


def test_reward_source_metrics():
    """reward/<name>_mean per function over the values it gave (NaN: it failed there),
    reward/model_* over the reward model's scores; nothing for episodes without them."""
    eps = [dataclasses.replace(ep(0, 2), reward_values={"gsm8k": 1.0, "format": 0.5}, model_score=2.0),
           dataclasses.replace(ep(0, 2), reward_values={"gsm8k": math.nan, "format": 0.25}, model_score=-1.0),
           dataclasses.replace(ep(1, 2), reward_values={"gsm8k": 0.0, "format": 0.0}, model_score=0.5),
           dataclasses.replace(ep(1, 2), reward_values={"gsm8k": math.nan, "format": math.nan})]
    m = reward_source_metrics(eps)
    # gsm8k: (1 + 0) / 2; format: (0.5 + 0.25 + 0) / 3; scores 2, -1, 0.5: mean 0.5, population std sqrt(1.5)
    assert m == {"reward/gsm8k_mean": 0.5, "reward/format_mean": float(torch.tensor(0.75) / 3),
                 "reward/model_mean": 0.5, "reward/model_std": float(torch.tensor(1.5).sqrt())}
    assert list(m)[:2] == ["reward/gsm8k_mean", "reward/format_mean"]  # the functions' order
    only_failed = reward_source_metrics([dataclasses.replace(ep(0, 2), reward_values={"flaky": math.nan})])
    assert list(only_failed) == ["reward/flaky_mean"] and math.isnan(only_failed["reward/flaky_mean"])
    assert reward_source_metrics([ep(0, 2), ep(0, 3)]) == {}
    assert rollout_metrics(score(eps, [1.0, 2.0, 3.0, 4.0], [None] * 4, 2)).items() >= m.items()


def test_update_metrics():
    ups = [MinibatchResult(loss=1.0, clipped_tokens=2.0, tokens=8.0, kl=4.0, entropy=8.0, grad_norm=3.0),
           MinibatchResult(loss=3.0, clipped_tokens=0.0, tokens=8.0, kl=0.0, entropy=8.0, grad_norm=1.0)]
    assert update_metrics(ups, 0.5, kl=True, entropy=True) == {
        "train/loss": 2.0, "train/clip_frac": 0.125, "train/grad_norm": 2.0, "train/lr": 0.5,
        "train/kl_ref": 0.25, "train/entropy": 1.0}
    assert update_metrics([], 0.1) == {"train/loss": 0.0, "train/clip_frac": 0.0, "train/grad_norm": 0.0,
                                       "train/lr": 0.1}


def test_minibatch_result_merge_sums_ranks():
    r0 = MinibatchResult(loss=0.5, clipped_tokens=1.0, tokens=4.0, kl=0.5, entropy=2.0, grad_norm=2.0)
    r1 = MinibatchResult(loss=0.25, clipped_tokens=0.0, tokens=2.0, kl=0.25, entropy=1.0, grad_norm=2.0)
    lps = [torch.zeros(1)]
    m = MinibatchResult.merge([r0, r1], lps)
    assert (m.loss, m.clipped_tokens, m.tokens, m.kl, m.entropy, m.grad_norm) == (0.75, 1.0, 6.0, 0.75, 3.0, 2.0)
    assert (m.nonfinite_ranks, m.nonfinite) == (0, False) and m.forward_logprobs is lps


def test_minibatch_result_merge_counts_nonfinite_ranks():
    nan = float("nan")
    m = MinibatchResult.merge([MinibatchResult(grad_norm=nan, nonfinite_ranks=1)] * 3, [])
    assert (m.nonfinite_ranks, m.nonfinite) == (3, True)


def test_minibatch_result_merge_ranks_that_disagree_raise():
    """One rank skipping a step the others applied leaves the shards of two different models."""
    ranks = [MinibatchResult(grad_norm=1.0), MinibatchResult(grad_norm=float("inf"), nonfinite_ranks=1),
             MinibatchResult(grad_norm=1.0)]
    with pytest.raises(RuntimeError, match=r"ranks \[1\] skipped it, the other 2 of 3 applied it"):
        MinibatchResult.merge(ranks, [])


def test_groups_with_dropped_episodes():
    """Multi-turn: an episode whose environment failed is dropped from its group; the rest of
    the group is scored, split and counted on its own."""
    eps = [ep(0, 2), ep(0, 2), ep(0, 2), ep(1, 2), ep(1, 2), ep(2, 2)]  # group_size 3: 1 and 2 lost episodes
    out = score(eps, [1.0, 0.0, 2.0, 4.0, 2.0, 5.0], [None] * 6, group_size=3, normalize_std=False,
                filter_equal_reward_groups=True)
    assert [e.advantage for e in out] == [0.0, -1.0, 1.0, 1.0, -1.0, 0.0]  # r - mean of what the group has
    assert [e.kept for e in out] == [True] * 5 + [False]  # a group of one has equal rewards
    assert minibatch_split(out, 3, 2) == [[0, 1, 2], [3, 4]]
    assert minibatch_split(out, 3, 1) == [[0, 1, 2, 3, 4]]
    m = rollout_metrics(out)
    assert (m["train/groups"], m["train/groups_kept"]) == (3.0, 2.0)


def test_loss_tokens_and_model_tokens():
    e = Episode(group=0, prompt=torch.arange(2), completion=torch.arange(6), sampler_logprobs=torch.zeros(3),
                finish_reason="done", model_mask=torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool),
                loss_mask=torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool))
    assert e.num_loss_tokens == 3 and e.model_in_loss() is None
    assert loss_norm([e, ep(0, 4)], "token_mean", 12) == LossNorm(2, "token_mean", 7)
    trained_obs = Episode(**{**e.__dict__, "loss_mask": torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool)})
    assert trained_obs.num_loss_tokens == 4
    assert trained_obs.model_in_loss().tolist() == [True, True, False, True]
