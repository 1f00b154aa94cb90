"""Run checkpoints: bitwise round trip, atomicity under a crash mid-write, pruning, and
clear errors for incomplete or corrupt checkpoints."""
import json
import random

import numpy as np
import pytest
import torch

from rlhf_exact.runtime import checkpoint as ck
from rlhf_exact.runtime.checkpoint import (CheckpointError, capture_rng_state, discard_checkpoints_after,
                                           flatten_optimizer_state, latest_checkpoint, load_run_checkpoint,
                                           restore_rng_state, save_run_checkpoint, unflatten_optimizer_state)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3, bias=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    for _ in range(2):
        model(torch.randn(4, 5)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _state(step=3):
    model, opt = _model_and_optimizer()
    named = {n: p.detach().to(torch.bfloat16) for n, p in model.named_parameters()}
    named["tied.weight"] = named["0.weight"]  # shares memory: stored as a copy
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    opt_t, opt_meta = flatten_optimizer_state(opt.state_dict())
    rng_t, rng_meta = capture_rng_state()
    tensors = {"model": named, "optimizer": opt_t, "rng": rng_t}
    meta = {"optimizer": opt_meta, "rng": rng_meta, "scheduler": sched.state_dict(),
            "dataloader": {"epoch": 1, "index": 17}}
    return tensors, meta, opt


def test_round_trip_bitwise(tmp_path):
    tensors, meta, opt = _state()
    path = save_run_checkpoint(tmp_path, 3, tensors, meta)
    assert path == tmp_path / "checkpoints" / "step_000003" and (path / "COMPLETE").is_file()
    got, got_meta = load_run_checkpoint(path)
    assert set(got) == set(tensors)
    for group in tensors:
        assert set(got[group]) == set(tensors[group])
        for name, t in tensors[group].items():
            assert got[group][name].dtype == t.dtype and torch.equal(got[group][name], t), (group, name)
    assert got_meta["step"] == 3 and got_meta["dataloader"] == {"epoch": 1, "index": 17}
    assert got_meta["scheduler"] == json.loads(json.dumps(meta["scheduler"]))

    # the optimizer state comes back loadable and equal
    restored = unflatten_optimizer_state(got["optimizer"], got_meta["optimizer"])
    _, fresh = _model_and_optimizer()
    torch.optim.lr_scheduler.LambdaLR(fresh, lambda s: 1.0)
    fresh.load_state_dict(restored)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][k][field], b["state"][k][field])


def test_rng_round_trip(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    t, m = capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    save_run_checkpoint(tmp_path, 1, {"rng": t}, {"rng": m})
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    got, meta = load_run_checkpoint(latest_checkpoint(tmp_path))
    restore_rng_state(got["rng"], meta["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_optimizer_state_with_name_keys():
    sd = {"state": {"layer.weight": {"exp_avg": torch.ones(2), "step": torch.tensor(4.0)}},
          "param_groups": [{"params": ["layer.weight"], "lr": 0.1}]}
    t, m = flatten_optimizer_state(sd)
    back = unflatten_optimizer_state(t, json.loads(json.dumps(m)))
    assert list(back["state"]) == ["layer.weight"] and torch.equal(back["state"]["layer.weight"]["step"],
                                                                    torch.tensor(4.0))


def test_crash_mid_write_leaves_no_complete_dir(tmp_path, monkeypatch):
    tensors, meta, _ = _state()
    good = save_run_checkpoint(tmp_path, 1, tensors, meta)
    real = ck._write_safetensors
    calls = []

    def crash_on_second(path, named):
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"partial")
            raise OSError("disk full (simulated)")
        real(path, named)

    monkeypatch.setattr(ck, "_write_safetensors", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        save_run_checkpoint(tmp_path, 2, tensors, meta)
    root = tmp_path / "checkpoints"
    assert (root / ".tmp-step_000002").is_dir() and not (root / "step_000002").exists()
    assert latest_checkpoint(tmp_path) == good
    # a step dir without COMPLETE (e.g. copied by hand) is skipped as well
    (root / "step_000005").mkdir()
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(CheckpointError, match="incomplete"):
        load_run_checkpoint(root / "step_000005")
    # the next save clears the stale tmp dir
    monkeypatch.setattr(ck, "_write_safetensors", real)
    save_run_checkpoint(tmp_path, 3, tensors, meta)
    assert not (root / ".tmp-step_000002").exists()
    assert latest_checkpoint(tmp_path) == root / "step_000003"


def test_pruning_and_discard(tmp_path):
    tensors = {"model": {"w": torch.arange(4.0)}}
    for step in (1, 2, 3, 4, 5):
        save_run_checkpoint(tmp_path, step, tensors, {}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000004", "step_000005"]
    discard_checkpoints_after(tmp_path, 4)
    assert latest_checkpoint(tmp_path).name == "step_000004"
    # saving a step that exists replaces it whole
    save_run_checkpoint(tmp_path, 4, {"model": {"w": torch.zeros(2)}}, {})
    got, _ = load_run_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(got["model"]["w"], torch.zeros(2))


def test_corrupt_files_are_named(tmp_path):
    path = save_run_checkpoint(tmp_path, 7, {"model": {"w": torch.ones(64)}}, {"a": 1})
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-10])  # truncated
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint file .*model\.safetensors"):
        load_run_checkpoint(path)
    f.write_bytes(b"\xff" * len(data))  # right size, garbage
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint file .*model\.safetensors"):
        load_run_checkpoint(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint file .*meta\.json"):
        load_run_checkpoint(path)


def test_group_subset_and_bad_inputs(tmp_path):
    path = save_run_checkpoint(tmp_path, 0, {"model": {"w": torch.ones(2)}, "optimizer": {"m": torch.zeros(2)}}, {})
    got, _ = load_run_checkpoint(path, groups=["model"])
    assert list(got) == ["model"]
    with pytest.raises(CheckpointError, match="no groups"):
        load_run_checkpoint(path, groups=["ema"])
    with pytest.raises(ValueError, match="reserved"):
        save_run_checkpoint(tmp_path, 1, {}, {"groups": []})
    with pytest.raises(ValueError, match="disagrees"):
        save_run_checkpoint(tmp_path, 1, {}, {"step": 2})
    assert load_run_checkpoint(save_run_checkpoint(tmp_path, 1, {}, {"step": 1}))[1]["step"] == 1
    with pytest.raises(TypeError, match="JSON"):
        save_run_checkpoint(tmp_path, 1, {}, {"x": object()})
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_no_pickle_in_module():
    import inspect

    src = inspect.getsource(ck)
    assert "torch.load" not in src and "pickle" not in src.replace("never pickle", "")
