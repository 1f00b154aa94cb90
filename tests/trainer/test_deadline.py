"""A trainer rank that hangs, with real Ray actors and a real gloo group: rank 1 of two
sleeps in end_step (a subclass of the real worker, the group's worker_class); the
group's call returns at its deadline with DeadlineExceeded naming the call, the rank and
the seconds, and every rank is killed (the other one sat in the collective). The loop
takes that error for a dead rank: with trainer.max_restarts used up its message names
the same call, rank and deadline.

    .venv/bin/python -m pytest -q tests/trainer/test_deadline.py
"""
import time

import pytest

pytest.importorskip("ray")

import ray

from rlhf_exact.models.tiny import make_tiny_model_dir
from rlhf_exact.runtime.deadline import DeadlineExceeded
from rlhf_exact.trainer.group import TrainerGroup
from rlhf_exact.trainer.worker import TrainerSpec, TrainerWorker

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


class HangingWorker(TrainerWorker):
    def end_step(self):
        if self.rank == 1:
            time.sleep(3600)
        return super().end_step()


class HangingGroup(TrainerGroup):
    worker_class = HangingWorker


def dies_within(actor, seconds, error) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            ray.get(actor.ready.remote(), timeout=seconds)
        except error:
            return True
        time.sleep(0.5)
    return False


def test_a_hung_rank_misses_its_deadline(tmp_path):
    from ray.exceptions import RayActorError

    from rlhf_exact import loop
    from rlhf_exact.config import load_config

    model = make_tiny_model_dir(tmp_path / "tiny", seed=1, std=0.05, num_hidden_layers=2)
    group = HangingGroup(TrainerSpec(model_path=str(model), exact=True, temperature=1.0, lr=1e-2), 2, 64)
    group.deadline_s = 3.0  # after the start, which takes longer on a busy CPU
    t = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as e:
        group.end_step()
    waited = time.perf_counter() - t
    assert str(e.value) == "trainer rank(s) [1]: end_step gave no result within its deadline of 3.0 s"
    assert 3.0 <= waited < 30.0, waited
    for actor in group.actors:  # both killed (ray.kill is asynchronous: their death shows within seconds)
        assert dies_within(actor, 60, RayActorError)
    ray.util.remove_placement_group(group.pg)

    run = loop.Loop(load_config(["recipe=grpo_qwen3_tiny", "trainer.max_restarts=0"]), tmp_path / "run")
    run.trainer_restarts = 0
    with pytest.raises(RuntimeError) as stop:
        run.restart_trainer(e.value)
    assert str(stop.value) == ("trainer rank(s) [1]: end_step gave no result within its deadline of 3.0 s; "
                               "trainer.max_restarts=0 restarts used up, the run stops")


def test_actors_that_do_not_fit_miss_their_placement_deadline(tmp_path):
    """5 ranks (or samplers) of half a CPU on a Ray of 2 CPUs stay pending forever; the
    groups give up at their deadline_s with one line naming the resource, before any
    process starts (the samplers: before an engine starts)."""
    import re

    from rlhf_exact.runtime.deadline import PlacementTimeout
    from rlhf_exact.sampler.group import SamplerGroup
    from rlhf_exact.sampler.spec import SamplerSpec

    model = make_tiny_model_dir(tmp_path / "tiny", seed=1, std=0.05, num_hidden_layers=2)
    tail = r", the cluster has 2 CPU \([0-9.]+ free\); "
    t = time.perf_counter()
    with pytest.raises(PlacementTimeout) as e:
        TrainerGroup(TrainerSpec(model_path=str(model), exact=True, temperature=1.0, lr=1e-2), 5, 64,
                     cpus_per_rank=0.5, deadline_s=2.0)
    assert re.fullmatch(r"Ray could not place 5 trainer rank\(s\) within 2 s: they need CPU 5 x 0.5 = 2.5"
                        + tail + r"trainer.world_size, cluster.num_cpus/num_gpus, trainer.deadline_s", str(e.value))
    with pytest.raises(PlacementTimeout) as e:
        SamplerGroup(SamplerSpec(model_path=str(model), num_samplers=5, cpus_per_actor=0.5, deadline_s=2.0))
    assert re.fullmatch(r"Ray could not place 5 sampler\(s\) within 2 s: they need CPU 5 x 0.5 = 2.5"
                        + tail + r"sampler.num_samplers, cluster.num_cpus/num_gpus, sampler.deadline_s", str(e.value))
    assert time.perf_counter() - t < 30
    assert ray.util.placement_group_table() and all(  # nothing left reserved
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
