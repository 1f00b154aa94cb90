"""Scoring rollouts with a learned reward model (rlhf_exact/rewards/model.py and the
Collector's reward model term, envs/collect.py), on real tiny checkpoints written by the
factory and read back through the loader.

  Invariance (torch.equal, never retried): a sequence's score alone equals its score in
  shuffled steps cut into forwards of any batch_tokens (1 token: one sequence a forward;
  everything in one forward). Negative control: the stock op table (kernels=default, fp32
  on CPU, where its GEMM blocking changes with the batch) gives other bits.
  The Collector: reward = functions + weight * score, exactly; the scores are stored in
  the episodes and not computed again; reward/model_mean is their mean, and
  reward_episodes keeps each function's value too (reward/<name>_mean).
  A sequence the model cannot score (empty, a token id outside the vocabulary) is a
  ValueError naming its index. The scorer actor group: test_scorer_group.py.
  Bad checkpoint: a policy directory as reward.model.path is one line naming the key,
  the file and the key of config.json.

    python -m pytest -q tests/rewards/test_reward_model_scoring.py
"""
import random

import pytest
import torch

from rlhf_exact.algo.rollout import rollout_metrics
from rlhf_exact.envs.collect import Collector, RewardSpec
from rlhf_exact.models.tiny import make_tiny_model_dir, train_tokenizer
from rlhf_exact.rewards import compute_rewards
from rlhf_exact.rewards.model import RewardModelScorer, token_batches
from rlhf_exact.types import Episode


def test_token_batches():
    assert token_batches([3, 4, 2, 9, 1], 7) == [[0, 1], [2], [3], [4]]
    assert token_batches([3, 4, 2, 9, 1], 100) == [[0, 1, 2, 3, 4]]
    assert token_batches([5, 5], 1) == [[0], [1]]
    assert token_batches([], 8) == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_scores_do_not_depend_on_batching(rm_dir, sequences, dtype):
    seqs = sequences()
    scorer = RewardModelScorer.load(rm_dir, dtype, batch_tokens=1)
    alone = scorer.score(seqs)  # one sequence per forward
    assert alone.dtype == torch.float32 and alone.shape == (len(seqs),)
    assert len(set(alone.tolist())) > len(seqs) // 2, "scores that hardly vary cannot show anything"
    rng = random.Random(1)
    for batch_tokens in (37, 200, 10**6):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        scorer.batch_tokens = batch_tokens
        shuffled = scorer.score([seqs[i] for i in order])
        assert torch.equal(shuffled, alone[order]), batch_tokens


def test_stock_kernels_depend_on_batching(rm_dir, sequences):
    """Negative control (module docstring)."""
    seqs = sequences()
    stock = RewardModelScorer.load(rm_dir, torch.float32, batch_tokens=1, kernels="default")
    alone = stock.score(seqs)
    stock.batch_tokens = 10**6
    assert not torch.equal(stock.score(seqs), alone)


def _episode(group, prompt, completion):
    return Episode(group=group, prompt=torch.tensor(prompt), completion=torch.tensor(completion),
                   sampler_logprobs=torch.zeros(len(completion)), finish_reason="length")


def test_collector_adds_weighted_scores_once(rm_dir):
    tok = train_tokenizer(512)
    rows = [{"prompt_ids": [5, 6, 7], "answer": [8, 9]}, {"prompt_ids": [10, 11], "answer": [12]}]
    episodes = [_episode(0, [5, 6, 7], [8, 9, 40]), _episode(0, [5, 6, 7], [41, 42]),
                _episode(1, [10, 11], [12, 12, 12, 12]), _episode(1, [10, 11], [300])]
    scorer = RewardModelScorer.load(rm_dir, torch.bfloat16, batch_tokens=8)
    alone = [float(scorer.score([e.prompt.tolist() + e.completion.tolist()])[0]) for e in episodes]
    collector = Collector(tok, RewardSpec((("synthetic", 1.0),), model_weight=0.5), max_tokens=4, scorer=scorer)
    scored = collector.score_model(episodes)
    assert [e.model_score for e in scored] == alone
    calls = []
    scorer.score = lambda seqs: calls.append(seqs)  # scored episodes are not scored again
    rewards, errors = collector.rewards(rows, scored)
    assert calls == [] and errors == [None] * 4
    ids = [e.completion.tolist() for e in episodes]
    rule, _ = compute_rewards((("synthetic", 1.0),), [tok.decode(t) for t in ids], ids,
                              [rows[e.group] for e in episodes])
    assert rewards == [r + 0.5 * s for r, s in zip(rule, alone)]
    without, _ = collector.rewards(rows, scored, model=False)
    assert without == rule
    m = rollout_metrics(scored)
    assert m["reward/model_mean"] == float(torch.tensor(alone).mean())
    assert "reward/model_mean" not in rollout_metrics(episodes)

    # what the loop calls: the same rewards, and the episodes carry each source
    scorer.score = RewardModelScorer.score.__get__(scorer)
    sourced, total, errors = collector.reward_episodes(rows, episodes)
    assert total == rewards and errors == [None] * 4
    assert [e.model_score for e in sourced] == alone and [e.reward_values for e in sourced] == [
        {"synthetic": r} for r in rule]
    m = rollout_metrics(sourced)
    assert m["reward/synthetic_mean"] == float(torch.tensor(rule).mean())
    assert m["reward/model_mean"] == float(torch.tensor(alone).mean())


def test_unscorable_sequence_names_its_index(rm_dir):
    scorer = RewardModelScorer.load(rm_dir, torch.bfloat16, batch_tokens=64)
    with pytest.raises(ValueError, match=r"^reward model: sequence 1 is empty"):
        scorer.score([[5, 6], []])
    with pytest.raises(ValueError, match=r"^reward model: sequence 2 has token id 512 at position 1, outside the "
                                         r"reward model's vocabulary \[0, 512\)$"):
        scorer.score([[5], [6], [7, 512, 8]])
    with pytest.raises(ValueError, match=r"sequence 0 has token id -1 at position 0"):
        scorer.score([[-1]])


def test_policy_directory_is_a_one_line_error(tmp_path):
    policy = make_tiny_model_dir(tmp_path / "policy", num_hidden_layers=1)
    with pytest.raises(ValueError) as e:
        RewardModelScorer.load(policy, torch.bfloat16, batch_tokens=64)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"reward.model.path={str(policy)!r}: ") and "config.json" in msg, msg
