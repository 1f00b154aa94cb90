"""Models on the batch-invariant kernel library.

    qwen3.py       Qwen3 dense: config, modules, varlen (training) and paged (generation)
                   attention contexts, packed batches, trainer-side logprobs
    ops.py         the op table the model computes with (exact kernels or stock torch) and
                   `select_kernels(kind)`, the process's one kernel switch
    hf_io.py       Hugging Face model directory load/save (safetensors only)
    tiny.py        tiny Qwen3 model + locally trained tokenizer, for CPU runs and tests

Submodules are imported on use; `from rlhf_exact.models import Qwen3ForCausalLM` works.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Qwen3Config": "qwen3", "Qwen3ForCausalLM": "qwen3", "VarlenContext": "qwen3", "PagedContext": "qwen3",
    "PackedBatch": "qwen3", "pack_sequences": "qwen3", "packed_logprobs": "qwen3",
    "load_model": "checkpoint", "save_model": "checkpoint", "read_config": "checkpoint",
    "read_state_dict": "checkpoint",
    "make_tiny_model_dir": "tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
