"""Faults with a learned reward model scoring the rollouts: the run as a user meets it,
`python -m rlhf_exact.train` in a process group of its own (test_faults.py's helpers).

  test_killed_rm_run_resumes_with_the_same_scores
        recipe=grpo_qwen3_tiny_rm against a tiny reward model: a run scored in the driver
        (reward.model.num_scorers=0), and the same run scored by 1 scorer actor, SIGKILLed
        after step 2 and resumed (run.resume=auto) with 2 scorer actors. The SIGKILL of the
        driver mid-run: every process of its Ray (GCS, raylet, agents, actors, vLLM engine
        processes, the scorer) is gone within seconds and its temp dir deleted; that run's
        engine runs in processes of its own (sampler.engine_process=separate, the CUDA
        default) so that they are among those; the first run is inline (the CPU default),
        and so is the resumed one (the command line changes the saved config's mode): the
        modes give the same run too. The resumed run: reward/model_mean,
        reward/synthetic_mean and every other metric equal at every step, final weights
        bitwise equal; nothing of the killed run's Ray (its scorer actor included) left.


    python -m pytest tests/loop/test_faults_rm.py -q
"""
import os
import signal

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray")
pytest.importorskip("psutil")

from .runs import assert_same_run, final_weights, metrics
from .test_faults import _cmd, assert_nothing_left, finish, launch, ray_of, wait_for_step

pytestmark = pytest.mark.slow


def test_killed_rm_run_resumes_with_the_same_scores(tmp_path, rm_dir):
    """A run scored in the driver equals the same run scored by actors, SIGKILLed (the
    driver: its Ray, engines and scorer leave nothing behind) and resumed with more of them."""
    rm = ("recipe=grpo_qwen3_tiny_rm", f"reward.model.path={rm_dir}", "eval.every_steps=0",
          "algorithm.prompts_per_step=4", "algorithm.group_size=4")
    whole = launch(tmp_path, "driver", *rm, "reward.model.num_scorers=0", steps=4)
    assert finish(whole) == 0, (tmp_path / "driver.err").read_text()[-3000:]

    run = launch(tmp_path, "actors", *rm, "reward.model.num_scorers=1", "sampler.engine_process=separate", steps=4)
    wait_for_step(tmp_path / "actors", run, 2)
    procs, temp_dir = ray_of(run)
    assert sum("ScorerActor" in " ".join(_cmd(p)) for p in procs) == 1
    assert any(p.name().startswith("VLLM") for p in procs) and any("raylet" in p.name() for p in procs)
    os.kill(run.pid, signal.SIGKILL)
    assert finish(run, timeout=30) == -signal.SIGKILL
    assert_nothing_left(procs, temp_dir)

    # 2 scorers: 2.5 CPUs reserved on this 2-core machine, which Ray may share
    run = launch(tmp_path, "actors", *rm, "reward.model.num_scorers=2", "cluster.num_cpus=3", "run.resume=auto",
                 "sampler.engine_process=inline", steps=4)
    assert finish(run) == 0, (tmp_path / "actors.err").read_text()[-3000:]
    err = (tmp_path / "actors.err").read_text()
    assert "resumed from" in err and "sampler.engine_process separate -> inline" in err, err[-3000:]
    a, b = metrics(tmp_path / "driver"), metrics(tmp_path / "actors")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4]
    assert all("reward/model_mean" in m and "reward/synthetic_mean" in m for m in a)
    assert [m["reward/model_mean"] for m in a] == [m["reward/model_mean"] for m in b]
    assert_same_run(a, final_weights(tmp_path / "driver"), tmp_path / "actors")
