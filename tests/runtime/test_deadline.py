"""The deadline arithmetic of actor calls (rlhf_exact/runtime/deadline.py): the floor
plus the work at the slowest live rate, bytes of nested tensor mappings, and the config
values that reach the groups. The groups' behaviour past a deadline (real Ray actors
that hang) is tested in tests/trainer/test_deadline.py and tests/sampler/test_actor.py.

    .venv/bin/python -m pytest -q tests/runtime/test_deadline.py
"""
import pytest
import torch

from rlhf_exact.runtime.deadline import MIB, deadline, tensor_bytes


def test_floor_plus_work_at_the_slowest_rate():
    assert deadline(600.0, 0, 20.0) == 600.0
    assert deadline(600.0, 64 * 8 * 12, 20.0) == 600.0 + 6144 / 20.0  # 64 samples x 12 tokens, 8 groups
    assert deadline(10.0, 100 * MIB, 20.0 * MIB) == 15.0


@pytest.mark.parametrize("floor, work, rate", [(0.0, 1, 1.0), (1.0, 1, 0.0), (1.0, -1, 1.0)])
def test_bad_arguments_are_refused(floor, work, rate):
    with pytest.raises(ValueError, match="deadline: floor_s"):
        deadline(floor, work, rate)


def test_tensor_bytes_of_nested_state():
    state = {"model": {"w": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.zeros(7)},
             "optimizer": {"exp_avg.w": torch.zeros(3, 5)}, "step": 4}
    assert tensor_bytes(state) == 3 * 5 * 2 + 7 * 4 + 3 * 5 * 4
    assert tensor_bytes({}) == 0


def test_deadline_fields_in_the_config():
    from rlhf_exact.config import load_config

    cfg = load_config(["recipe=grpo_qwen3_tiny", "trainer.deadline_s=5", "trainer.deadline_tokens_per_s=2",
                       "trainer.deadline_mb_per_s=0.5", "sampler.deadline_mb_per_s=3"])
    assert (cfg.trainer.deadline_s, cfg.trainer.deadline_tokens_per_s, cfg.trainer.deadline_mb_per_s) == (5.0, 2.0, 0.5)
    assert cfg.sampler.deadline_mb_per_s == 3.0
