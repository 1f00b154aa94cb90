"""The pure parts of the sampler's step profile (rlhf_exact/sampler/step_profile.py); the
hooks on a real engine are tested in test_engine_parity.py (TestBatch16.test_step_profile)."""
import pytest

from rlhf_exact.sampler.step_profile import StepRecord, step_kind, summarize, top_ops


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
