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
