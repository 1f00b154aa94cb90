"""The reward model's scorer group (rlhf_exact/rewards/scorer_group.py): real Ray actors
loading a real tiny reward model directory, against the in-process scorer
(rewards/model.py) scoring each sequence alone, in the driver's exact mode as the loop
runs it. Every comparison is torch.equal, never retried.

  Invariance: groups of 1 and 2 actors score shuffled batches of 1 to 64 sequences
  bitwise as each sequence alone (the share an actor gets, its batch_tokens and the
  other sequences change no bit).
  Faults: an actor SIGKILLed between calls (via its pid()) and one SIGKILLed in the middle
  of a call: Ray restarts it, the group scores its share again, the scores are the same
  bits. An actor that hangs once past its deadline (an actor_class subclass, as
  tests/sampler/test_actor.py's HangOnceActor) is killed, restarted, and its share
  re-scored; one that always hangs gives a RuntimeError naming the actor and the
  deadline, and a later call one saying its restarts are used up.
  Bad input: an empty sequence or a token id outside the vocabulary is a ValueError naming
  the sequence's index in the call, before any actor sees it; an actor given one directly
  raises the same error and keeps working. A directory that is not a reward model fails
  the group's start at once, naming the actor and reward.model.path.

    python -m pytest -q tests/rewards/test_scorer_group.py
"""
import os
import pathlib
import random
import signal
import threading
import time

import pytest
import torch

pytest.importorskip("ray")

import ray

from rlhf_exact.rewards.model import RewardModelScorer
from rlhf_exact.rewards.scorer_group import ScorerActor, ScorerGroup, ScorerSpec, shares

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture(scope="module")
def seqs(sequences):
    return sequences(64, seed=7)


@pytest.fixture(scope="module")
def alone(rm_dir, seqs):
    """Each sequence's score alone (one sequence a forward), in the driver's exact mode."""
    from exact_kernels import exact_mode

    with exact_mode():
        scores = RewardModelScorer.load(rm_dir, torch.bfloat16, batch_tokens=1).score(seqs)
    assert len(set(scores.tolist())) > len(seqs) // 2, "scores that hardly vary cannot show anything"
    return scores


def here(tmp_path, rm_dir) -> str:
    """The reward model under tmp_path (a link): a test actor's marker files go beside it."""
    link = tmp_path / "rm"
    link.symlink_to(rm_dir, target_is_directory=True)
    return str(link)


def test_shares():
    assert shares(5, 2) == [[0, 2, 4], [1, 3]]
    assert shares(2, 3) == [[0], [1], []]
    assert shares(0, 1) == [[]]


@pytest.mark.parametrize("num_scorers", [1, 2])
def test_group_scores_equal_each_sequence_alone(rm_dir, seqs, alone, num_scorers):
    group = ScorerGroup(ScorerSpec(str(rm_dir), num_scorers=num_scorers, batch_tokens=200, deadline_s=120))
    try:
        rng = random.Random(num_scorers)
        for size in (1, 2, 3, 5, 8, 13, 21, 34, 64):
            idx = rng.sample(range(len(seqs)), size)
            got = group.score([seqs[i] for i in idx])
            assert got.dtype == torch.float32 and torch.equal(got, alone[idx]), size
        assert group.restarts == 0
    finally:
        group.shutdown()


class SlowActor(ScorerActor):
    """Marks each call it enters (a file beside the model) and takes 3 s before scoring,
    so a test can kill it in the middle of one."""

    def __init__(self, model_path, *args, **kwargs):
        self.marks = pathlib.Path(model_path).parent
        super().__init__(model_path, *args, **kwargs)

    def score(self, sequences):
        (self.marks / f"entered-{os.getpid()}").touch()
        time.sleep(3)
        return super().score(sequences)


class SlowGroup(ScorerGroup):
    actor_class = SlowActor


def test_killed_actor_between_and_during_calls(tmp_path, rm_dir, seqs, alone, caplog):
    group = SlowGroup(ScorerSpec(here(tmp_path, rm_dir), num_scorers=2, batch_tokens=200, deadline_s=120))
    caplog.set_level("WARNING", logger="rlhf_exact")
    try:
        idx = list(range(0, 64, 3))
        os.kill(ray.get(group.actors[0].pid.remote()), signal.SIGKILL)  # between calls
        assert torch.equal(group.score([seqs[i] for i in idx]), alone[idx])
        assert group.restarts == 1

        pid = ray.get(group.actors[1].pid.remote())
        out = {}
        call = threading.Thread(target=lambda: out.update(scores=group.score([seqs[i] for i in idx])))
        call.start()
        entered = tmp_path / f"entered-{pid}"
        t = time.time()
        while not entered.exists():
            assert time.time() - t < 60, "the actor never entered the call"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # during the call
        call.join(timeout=300)
        assert torch.equal(out["scores"], alone[idx])
        assert group.restarts == 2 and group.actor_restarts == [1, 1]
        warned = [r.getMessage() for r in caplog.records]
        assert sum(w.startswith("reward model scorer 0 died during score") for w in warned) == 1, warned
        assert sum(w.startswith("reward model scorer 1 died during score") for w in warned) == 1, warned
    finally:
        group.shutdown()


class HangOnceActor(ScorerActor):
    """The group's first call (over all its actors and restarts: the actor that creates
    a file beside the model) hangs."""

    def __init__(self, model_path, *args, **kwargs):
        self.marker = pathlib.Path(model_path).parent / "hung_once"
        super().__init__(model_path, *args, **kwargs)

    def score(self, sequences):
        try:
            self.marker.touch(exist_ok=False)  # one actor wins, even when both look at once
        except FileExistsError:
            return super().score(sequences)
        time.sleep(3600)


class HangOnceGroup(ScorerGroup):
    actor_class = HangOnceActor


class HangActor(ScorerActor):
    def score(self, sequences):
        time.sleep(3600)


class HangGroup(ScorerGroup):
    actor_class = HangActor


def test_hung_actor_is_restarted_and_rescores(tmp_path, rm_dir, seqs, alone, caplog):
    group = HangOnceGroup(ScorerSpec(here(tmp_path, rm_dir), num_scorers=2, batch_tokens=200, deadline_s=10,
                                     deadline_tokens_per_s=1e6, start_deadline_s=120))
    caplog.set_level("WARNING", logger="rlhf_exact")
    try:
        idx = list(range(40))
        assert torch.equal(group.score([seqs[i] for i in idx]), alone[idx])
        assert (tmp_path / "hung_once").exists() and group.restarts == 1
        warned = [r.getMessage() for r in caplog.records]
        assert any(w.startswith("reward model scorer ") and "gave no result within its deadline of " in w
                   for w in warned), warned
    finally:
        group.shutdown()


def test_always_hung_actor_is_a_clear_error(tmp_path, rm_dir, seqs):
    group = HangGroup(ScorerSpec(here(tmp_path, rm_dir), num_scorers=1, deadline_s=10, deadline_tokens_per_s=1e6,
                                 start_deadline_s=120, max_restarts=1))
    try:
        with pytest.raises(RuntimeError) as e:
            group.score(seqs[:4])
        deadline_s = group.call_deadline(seqs[:4])
        assert str(e.value) == (f"reward model scorer actor(s) [0]: score died or gave no result within its deadline "
                                f"(the last {deadline_s:.0f} s) 2 times (reward.model.max_restarts=1); the run stops")
        with pytest.raises(RuntimeError, match=r"^reward model scorer 0 died or missed its deadline 2 times in this "
                                               r"run: its reward.model.max_restarts=1 restarts are used up"):
            group.score(seqs[:4])  # Ray gave up on it: said at once, not after another deadline
    finally:
        group.shutdown()


def test_bad_sequence_names_its_index_and_the_actor_survives(rm_dir, seqs, alone):
    group = ScorerGroup(ScorerSpec(str(rm_dir), num_scorers=2, deadline_s=120))
    try:
        with pytest.raises(ValueError, match=r"^reward model: sequence 3 is empty"):
            group.score([seqs[0], seqs[1], seqs[2], [], seqs[4]])
        with pytest.raises(ValueError, match=r"^reward model: sequence 1 has token id 512 at position 2, outside "
                                             r"the reward model's vocabulary \[0, 512\)$"):
            group.score([seqs[0], [5, 6, 512, 7]])
        with pytest.raises(ValueError, match=r"reward model: sequence 0 has token id -3 at position 0"):
            ray.get(group.actors[1].score.remote([[-3, 5]]), timeout=60)  # the actor's own check
        assert torch.equal(group.score(seqs[:9]), alone[:9])  # both actors still work
        assert group.restarts == 0
    finally:
        group.shutdown()


def test_a_model_that_does_not_load_fails_at_start(tmp_path):
    from rlhf_exact.models.tiny import make_tiny_model_dir

    policy = make_tiny_model_dir(tmp_path / "policy", num_hidden_layers=1)  # not a reward model
    t = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        ScorerGroup(ScorerSpec(str(policy), num_scorers=1, deadline_s=120))
    assert str(e.value).startswith("reward model scorer 0 failed to start: ") and "reward.model.path=" in str(e.value)
    assert time.monotonic() - t < 60, "a load error is reported when it happens, not at the start deadline"
