"""Eval's scoring of collected episodes when the environment is the only reward (the
schema allows reward.functions=[] with env.name set): a pass is the environment's reward
reaching eval.pass_threshold, an episode whose environment failed neither passes nor
counts a reward; with a reward function, a pass is the first function's value alone."""
import torch

from rlhf_exact.config import load_config
from rlhf_exact.envs import EnvRunner
from rlhf_exact.envs.collect import Collector, RewardSpec
from rlhf_exact.eval import Evaluator
from rlhf_exact.types import Episode

ROWS = [{"prompt_ids": [5, 6, 7], "targets": [9]}]


def episode(reward: float, finish_reason: str = "done", completion=(9, 9)) -> Episode:
    c = torch.tensor(completion, dtype=torch.int64)
    return Episode(group=0, prompt=torch.tensor(ROWS[0]["prompt_ids"]), completion=c,
                   sampler_logprobs=torch.zeros(len(c)), finish_reason=finish_reason, reward=reward,
                   model_mask=torch.ones(len(c), dtype=torch.bool), loss_mask=torch.ones(len(c), dtype=torch.bool))


def evaluator(cfg, functions=()) -> Evaluator:
    runner = EnvRunner("tests.envs.envs_for_tests:Echo", {"turns": 1}, None, vocab_size=512)
    return Evaluator(cfg, Collector(None, RewardSpec(tuple(functions)), 8, runner, cfg_limits(cfg)), ROWS)


def cfg_limits(cfg):
    from rlhf_exact.envs import Limits

    return Limits(max_turns=cfg.env.max_turns, max_turn_tokens=8, max_episode_tokens=64)


def test_environment_reward_alone():
    cfg = load_config(["env.name=synthetic_calculator", "reward.functions=[]", "eval.pass_threshold=0.5"])
    assert cfg.reward.functions == []
    ev = evaluator(cfg)
    try:
        total, passed, _ = ev._score([episode(1.0), episode(0.25), episode(1.0, "env_error")])
    finally:
        ev.collector.close()
    assert total == [1.0, 0.25, 0.0] and passed == [True, False, False]


def test_first_function_alone_decides_a_pass():
    class Decode:
        def decode(self, ids):
            return " ".join(map(str, ids))

    cfg = load_config(["env.name=synthetic_calculator", "eval.pass_threshold=0.5"])
    ev = evaluator(cfg, [("tests.envs.test_eval_score:zero", 1.0)])
    ev.collector.tokenizer = Decode()
    try:
        total, passed, _ = ev._score([episode(1.0)])
    finally:
        ev.collector.close()
    assert total == [1.0] and passed == [False]  # the environment's 1.0 counts in the total, not in the pass


def zero(completion, completion_ids, sample):
    return 0.0
