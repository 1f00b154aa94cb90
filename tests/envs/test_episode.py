"""Multi-turn episode rollout (envs/episode.py) with hand values: the prompts each turn
sends are the previous ids exactly, masks, logprob concatenation, limits, failures,
metrics. The sampler here is a scripted pure function (prompt -> tokens and logprobs);
tests/envs/test_engine_episodes.py drives the real vLLM engine and trainer model."""
import dataclasses

import pytest
import torch

from rlhf_exact.envs import EnvRunner, Limits, episode_metrics, run_episodes, turn_seed
from rlhf_exact.envs.episode import FINISH_REASONS, turn_budget


ECHO = "envs.envs_for_tests:Echo" if __package__ == "envs" else f"{__package__}.envs_for_tests:Echo"
BAD = ECHO.replace(":Echo", ":Bad")


@dataclasses.dataclass(frozen=True)
class Params:
    max_tokens: int = 16


@dataclasses.dataclass
class Comp:
    token_ids: list
    logprobs: torch.Tensor
    finish_reason: str


@dataclasses.dataclass
class Res:
    completions: list
    error: str | None = None


class ScriptedSampler:
    """Turn tokens: 3 tokens [100 + len(prompt) % 7, 101, 102][:max_tokens] with logprob
    -(len(prompt) + j) / 8; records every request."""

    def __init__(self, refuse_len=None):
        self.requests = []
        self.refuse_len = refuse_len

    def __call__(self, prompts, params, seeds):
        self.requests.append((prompts, [p.max_tokens for p in params], seeds))
        out = []
        for p, sp in zip(prompts, params):
            if len(p) == self.refuse_len:
                out.append(Res([], error="refused"))
                continue
            ids = [100 + len(p) % 7, 101, 102][:sp.max_tokens]
            lp = torch.tensor([-(len(p) + j) / 8 for j in range(len(ids))], dtype=torch.float32)
            out.append(Res([Comp(ids, lp, "length" if len(ids) == sp.max_tokens else "stop")]))
        return out


def decode(ids):
    return " ".join(map(str, ids))


@pytest.fixture
def echo():
    r = EnvRunner(ECHO, {"turns": 2}, None, vocab_size=512)
    yield r
    r.close()


def test_token_in_token_out(echo):
    s = ScriptedSampler()
    rows = [{"prompt_ids": [5, 6, 7]}, {"prompt_ids": [8]}]
    eps = run_episodes(echo, rows, s, limits=Limits(max_turns=4, max_episode_tokens=64, max_turn_tokens=3),
                       params=Params(), seeds=[10, 20], decode=decode)
    # turn 2's prompt is turn 1's prompt + its sampled ids + the observation's ids, as ids
    assert s.requests[0] == ([[5, 6, 7], [8]], [3, 3], [10, 20])
    assert s.requests[1] == ([[5, 6, 7, 103, 101, 102, 70, 71], [8, 101, 101, 102, 70, 71]], [3, 3],
                             [turn_seed(10, 1), turn_seed(20, 1)])
    assert len(s.requests) == 2
    e = eps[0]
    assert e.prompt_ids == [5, 6, 7]
    assert e.token_ids == [103, 101, 102, 70, 71, 101, 101, 102]  # the last observation is not appended: done
    assert e.model_mask.tolist() == [True, True, True, False, False, True, True, True]
    assert e.loss_mask.tolist() == e.model_mask.tolist()
    assert e.model_token_ids == [103, 101, 102, 101, 101, 102]
    assert torch.equal(e.sampler_logprobs, torch.tensor([-3 / 8, -4 / 8, -5 / 8, -8 / 8, -9 / 8, -10 / 8]))
    assert e.turn_spans == [(0, 3), (5, 3)]
    assert e.turn_rewards == [0.5, 1.0] and e.reward == 1.5
    assert e.tool_errors == 1 and e.finish_reason == "done" and e.error is None
    assert episode_metrics(eps) == {"episode/turns_mean": 2.0, "episode/tool_errors": 2.0,
                                    "episode/truncated_frac": 0.0, "episode/errors": 0.0} | finished(done=2)


def test_trained_observation_in_loss_mask():
    r = EnvRunner(ECHO, {"turns": 2, "trained": True}, None, vocab_size=512)
    (e,) = run_episodes(r, [{"prompt_ids": [5]}], ScriptedSampler(), limits=Limits(4, 64, 3), params=Params(),
                        seeds=[0], decode=decode)
    assert e.model_mask.tolist() == [True] * 3 + [False] * 2 + [True] * 3
    assert e.loss_mask.tolist() == [True] * 8


def test_limits(echo):
    rows = [{"prompt_ids": [5, 6, 7]}]
    (e,) = run_episodes(echo, rows, ScriptedSampler(), limits=Limits(max_turns=1, max_episode_tokens=64,
                        max_turn_tokens=3), params=Params(), seeds=[0], decode=decode)
    assert e.finish_reason == "max_turns" and e.num_turns == 1 and e.turn_rewards == [0.5]
    assert e.token_ids == [103, 101, 102]  # the observation after a limit is not appended
    # 3 prompt + 3 turn + 2 observation = 8: room for 1 more token (budget 9), the turn gets max_tokens 1
    s = ScriptedSampler()
    (e,) = run_episodes(echo, rows, s, limits=Limits(max_turns=4, max_episode_tokens=9, max_turn_tokens=3),
                        params=Params(), seeds=[0], decode=decode)
    assert [r[1] for r in s.requests] == [[3], [1]]
    assert e.token_ids == [103, 101, 102, 70, 71, 101] and e.finish_reason == "done"
    # budget 8: the observation would leave no room, so the episode ends at max_tokens after turn 1
    (e,) = run_episodes(echo, rows, ScriptedSampler(), limits=Limits(max_turns=4, max_episode_tokens=8,
                        max_turn_tokens=3), params=Params(), seeds=[0], decode=decode)
    assert e.finish_reason == "max_tokens" and e.token_ids == [103, 101, 102] and e.turn_rewards == [0.5]
    # budget 5: the first turn is cut to 2 tokens, then nothing is left
    (e,) = run_episodes(echo, rows, ScriptedSampler(), limits=Limits(max_turns=4, max_episode_tokens=5,
                        max_turn_tokens=3), params=Params(), seeds=[0], decode=decode)
    assert e.finish_reason == "max_tokens" and e.token_ids == [103, 101]
    # a prompt as long as the budget: the environment's start is unusable, before any sampling
    (e,) = run_episodes(echo, rows, ScriptedSampler(), limits=Limits(max_turns=4, max_episode_tokens=3,
                        max_turn_tokens=3), params=Params(), seeds=[0], decode=decode)
    assert e.finish_reason == "env_error" and "max_episode_tokens" in e.error and e.failed
    assert episode_metrics([e])["episode/errors"] == 1.0 and episode_metrics([e])["episode/finish/env_error"] == 1.0


def test_turn_budget_and_seeds():
    lim = Limits(max_turns=2, max_episode_tokens=10, max_turn_tokens=4)
    assert [turn_budget(lim, n) for n in (0, 6, 7, 9, 10, 12)] == [4, 4, 3, 1, 0, 0]
    assert turn_seed(None, 3) is None and turn_seed(41, 0) == 41
    assert turn_seed(41, 1) == (41 * 1_000_003 + 7_919) % (2 ** 31 - 1)
    assert len({turn_seed(s, t) for s in range(50) for t in range(4)}) == 200
    with pytest.raises(ValueError, match="max_turns"):
        Limits(max_turns=0)


def test_metrics_hand_values():
    from rlhf_exact.envs import Trajectory

    def ep(turns, reason, tool_errors=0):
        return Trajectory(prompt_ids=[1], turn_spans=[(0, 1)] * turns, finish_reason=reason, tool_errors=tool_errors)

    eps = [ep(1, "done", 1), ep(3, "max_turns"), ep(2, "max_tokens", 2), ep(2, "done"), ep(1, "env_error", 1),
           ep(0, "sampler_error")]
    assert episode_metrics(eps) == {"episode/turns_mean": 2.0, "episode/tool_errors": 4.0,
                                    "episode/truncated_frac": 0.5, "episode/errors": 2.0} | finished(
        done=2, max_turns=1, max_tokens=1, env_error=1, sampler_error=1)
    assert episode_metrics([])["episode/finish/done"] == 0.0


BAD_KINDS = {"raise": "exception", "hang": "timeout", "vocab": "malformed", "nan": "malformed",
             "type": "malformed", "text": "malformed"}


def finished(**counts) -> dict[str, float]:
    """episode/finish/<reason> for every finish reason: `counts`, 0 for the others."""
    return {f"episode/finish/{r}": float(counts.get(r, 0)) for r in FINISH_REASONS}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_environments_are_per_episode_errors(num_workers):
    """Every failure is the failing episode's (env_error, with the failure's kind); an
    environment that never says done ends at max_turns, one whose observation cannot fit
    at max_tokens; the good episodes of the same batch finish; each reason is counted."""
    kinds = dict(BAD_KINDS)
    if num_workers:
        kinds |= {"exit": "crash", "unpicklable": "exception"}
    rows = [{"prompt_ids": [5], "bad": b} for b in [*kinds, "never_done", "huge"]] + [{"prompt_ids": [6]},
                                                                                       {"prompt_ids": [7]}]
    r = EnvRunner(BAD, {"turns": 2}, None, vocab_size=512, num_workers=num_workers, timeout_s=1.5)
    try:
        eps = run_episodes(r, rows, ScriptedSampler(), limits=Limits(4, 64, 3), params=Params(),
                           seeds=list(range(len(rows))), decode=decode)
        for e, (bad, kind) in zip(eps, kinds.items()):
            assert e.finish_reason == "env_error" and f"turn 0: step: {kind}:" in e.error, (bad, e.error)
        never_done, huge = eps[len(kinds):len(kinds) + 2]
        assert never_done.finish_reason == "max_turns" and never_done.num_turns == 4 and never_done.reward == 2.0
        assert huge.finish_reason == "max_tokens" and huge.num_turns == 1 and huge.token_ids == [101, 101, 102]
        assert huge.reward == 0.5 and huge.error is None and not huge.failed
        for e in eps[len(kinds) + 2:]:
            assert e.finish_reason == "done" and e.reward == 1.5 and e.num_turns == 2
        m = episode_metrics(eps)
        assert m == {"episode/turns_mean": (4 + 1 + 2 + 2) / 4, "episode/tool_errors": 2.0,
                     "episode/truncated_frac": 2 / 4, "episode/errors": float(len(kinds))} | finished(
            done=2, max_turns=1, max_tokens=1, env_error=len(kinds))
        # the runner still serves after killing and replacing workers
        again = run_episodes(r, rows[-2:], ScriptedSampler(), limits=Limits(4, 64, 3), params=Params(),
                             seeds=[0, 1], decode=decode)
        assert [e.finish_reason for e in again] == ["done", "done"]
    finally:
        r.close()


def test_sampler_refusal_is_per_episode():
    r = EnvRunner(ECHO, {"turns": 2}, None, vocab_size=512)
    eps = run_episodes(r, [{"prompt_ids": [5]}, {"prompt_ids": [5, 6]}], ScriptedSampler(refuse_len=2),
                       limits=Limits(4, 64, 3), params=Params(), seeds=[0, 1], decode=decode)
    assert eps[0].finish_reason == "done"
    assert eps[1].finish_reason == "sampler_error" and "refused" in eps[1].error
    assert episode_metrics(eps)["episode/finish/sampler_error"] == 1.0


def test_start_failures_and_config_errors():
    class Rows(dict):
        pass
    r = EnvRunner(ECHO, {}, None, vocab_size=8)  # the prompt ids lie outside a vocabulary of 8
    (e,) = run_episodes(r, [{"prompt_ids": [9]}], ScriptedSampler(), limits=Limits(), params=Params(), seeds=[0],
                        decode=decode)
    assert e.finish_reason == "env_error" and e.error.startswith("start: malformed:")
    with pytest.raises(ValueError, match="unexpected keyword argument 'nope'"):
        EnvRunner(ECHO, {"nope": 1}, None, vocab_size=8)
    with pytest.raises(ValueError, match="could not be built.*unexpected keyword"):
        EnvRunner(ECHO, {"nope": 1}, None, vocab_size=8, num_workers=1)
    with pytest.raises(ValueError, match="did you mean 'gsm8k_calculator'"):
        EnvRunner("gsm8k_calculater", {}, None, vocab_size=8)
    with pytest.raises(ValueError, match="module 'no_such_module' cannot be imported"):
        EnvRunner("no_such_module:Env", {}, None, vocab_size=8)
    with pytest.raises(ValueError, match="not an rlhf_exact.envs.Environment"):
        EnvRunner("collections:OrderedDict", {}, None, vocab_size=8)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_registered_by_an_imported_module(num_workers):
    """A name registered by a module of run.imports resolves in the driver and in workers."""
    module = ECHO.partition(":")[0]
    r = EnvRunner("echo_for_tests", {"turns": 1}, None, vocab_size=512, num_workers=num_workers, imports=[module])
    try:
        (e,) = run_episodes(r, [{"prompt_ids": [5]}], ScriptedSampler(), limits=Limits(), params=Params(), seeds=[0],
                            decode=decode)
        assert e.finish_reason == "done" and e.turn_rewards == [0.5]
    finally:
        r.close()
    with pytest.raises(ValueError, match="run.imports: 'no_such_module' cannot be imported"):
        EnvRunner("echo_for_tests", {}, None, vocab_size=8, imports=["no_such_module"])
