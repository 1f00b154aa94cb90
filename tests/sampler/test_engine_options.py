"""The exact engine's vLLM keywords (engine.exact_engine_kwargs), a pure function: the
logprob mode that reports our values untouched, the per-engine temperature, and the
CUDA-graph mode for each cuda_graphs value (the engines themselves: test_engine_parity.py)."""
from rlhf_exact.sampler.engine import exact_engine_kwargs


def test_eager_decode_and_mixed_graphs():
    eager = exact_engine_kwargs(0.7, False, 1024)
    assert eager == {"logprobs_mode": "raw_logits", "additional_config": {"rlhf_exact": {"temperature": 0.7}}}
    decode = exact_engine_kwargs(1.0, True, 1024)
    assert decode["compilation_config"] == {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    assert "mixed_graphs" not in decode["additional_config"]["rlhf_exact"]
    mixed = exact_engine_kwargs(1.0, "mixed", 512)
    assert mixed["compilation_config"] == {"mode": 0, "cudagraph_mode": "FULL", "max_cudagraph_capture_size": 512}
    assert mixed["additional_config"]["rlhf_exact"] == {"temperature": 1.0, "mixed_graphs": True}


def test_builder_reads_the_mixed_graphs_switch():
    import pytest

    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from rlhf_exact.sampler.vllm_attention import mixed_graphs

    assert mixed_graphs(SimpleNamespace(additional_config=exact_engine_kwargs(1.0, "mixed", 64)["additional_config"]))
    assert not mixed_graphs(SimpleNamespace(additional_config=exact_engine_kwargs(1.0, True, 64)["additional_config"]))
    assert not mixed_graphs(SimpleNamespace(additional_config=None))


def test_engine_step_failed_reads_where_the_error_was_raised():
    """engine_step_failed: an error raised inside vLLM's EngineCore.step (an inline
    engine's step, in this process) is a dead engine; one raised elsewhere, in the same
    file (a collective_rpc) or outside vLLM, is not. Frames compiled under vLLM's file name."""
    from rlhf_exact.sampler.engine import engine_step_failed

    core = "/venv/lib/python3.11/site-packages/vllm/v1/engine/core.py"
    ns = {}
    exec(compile("def step(f):\n    f()\n\ndef collective_rpc(f):\n    f()\n", core, "exec"), ns)

    def boom():
        raise RuntimeError("the model's forward failed")

    def caught(call, *args):
        try:
            call(*args)
        except RuntimeError as e:
            return e
        raise AssertionError("no error")

    assert engine_step_failed(caught(ns["step"], boom))
    assert not engine_step_failed(caught(ns["collective_rpc"], boom))
    assert not engine_step_failed(caught(boom))
