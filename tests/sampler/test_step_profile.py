"""The pure parts of the sampler's step profile (rlhf_exact/sampler/step_profile.py); the
hooks on a real engine are tested in test_engine_parity.py (TestBatch16.test_step_profile)."""
import pytest

import cProfile
import pstats

from rlhf_exact.sampler.step_profile import StepRecord, step_kind, summarize, top_functions, top_ops


def test_step_kind():
    assert step_kind([1, 1, 1]) == "decode"
    assert step_kind([40, 7]) == "prefill"
    assert step_kind([1, 33, 1]) == "mixed"
    with pytest.raises(ValueError, match="no scheduled request"):
        step_kind([])


def test_summarize_by_kind():
    recs = [StepRecord("prefill", 2, 80, 0.010, 0.020), StepRecord("decode", 4, 4, 0.001, 0.004),
            StepRecord("decode", 4, 4, 0.003, 0.006)]
    s = summarize(recs)
    assert set(s) == {"prefill", "decode", "all"}
    assert s["decode"]["steps"] == 2 and s["decode"]["tokens"] == 8
    assert s["decode"]["ms_per_step"] == pytest.approx(5.0)
    assert s["decode"]["launch_share"] == pytest.approx(0.4)
    assert s["all"]["seconds"] == pytest.approx(0.030) and s["all"]["tokens_per_step"] == pytest.approx(88 / 3)
    assert summarize([]) == {}


def test_top_ops():
    rows = [("mm", 10, 600.0), ("attn", 5, 300.0), ("copy", 3, 100.0)]
    top = top_ops(rows, k=2)
    assert [o["op"] for o in top] == ["mm", "attn"] and top[0]["calls"] == 10
    assert top[0]["share"] == pytest.approx(0.6) and top[1]["ms"] == pytest.approx(0.3)
    assert top_ops([]) == []


def _spin(n: int) -> int:
    return sum(i * i for i in range(n))


def _outer() -> int:
    return _spin(200_000) + _spin(10)


def test_top_functions_ranks_a_real_profile():
    prof = cProfile.Profile()
    prof.enable()
    _outer()
    prof.disable()
    top = top_functions(pstats.Stats(prof), k=50)
    names = [f["func"] for f in top["cumulative"]]
    outer = next(f for f in top["cumulative"] if f["func"].endswith("(_outer)"))
    spin = next(f for f in top["cumulative"] if f["func"].endswith("(_spin)"))
    assert outer["func"].startswith("sampler/test_step_profile.py:") and outer["calls"] == 1 and spin["calls"] == 2
    assert names.index(outer["func"]) < names.index(spin["func"]) and outer["cum_ms"] >= spin["cum_ms"]
    assert [f["self_ms"] for f in top["self"]] == sorted((f["self_ms"] for f in top["self"]), reverse=True)
    assert 0.99 < sum(f["share"] for f in top["self"]) <= 1.0 + 1e-9  # k=50 keeps every function here
    assert len(top_functions(pstats.Stats(prof), k=1)["self"]) == 1
