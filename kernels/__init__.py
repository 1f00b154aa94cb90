"""exact_kernels: batch-invariant kernels for CPU (C++) and CUDA (Triton).

Every op fixes the reduction order of each output element by the reduced length and
compile-time constants alone: never by the number of rows, a row's position, the
other rows, or the SM/thread count. So a row computed alone gives the same bits as
the same row inside any batch. fp32 accumulation throughout.

The folder is `kernels/` but the import name is `exact_kernels` (pyproject maps it):
a top-level `kernels` would shadow the Hugging Face `kernels` package.

Public ops (each module's docstring states its math and reduction order):

    mm, addmm, bmm, linear            matmul.py
    rms_norm                          rms_norm.py
    silu_and_mul                      activation.py
    rotary_table, apply_rotary        rotary.py
    log_softmax, token_logprobs, row_mean   logprobs.py
    varlen_attention, paged_attention, write_kv_cache   attention.py
    enable_exact_mode, disable_exact_mode, exact_mode   mode.py

Depends on torch and triton only.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "mm": "matmul", "addmm": "matmul", "bmm": "matmul", "linear": "matmul",
    "rms_norm": "rms_norm",
    "silu_and_mul": "activation",
    "rotary_table": "rotary", "apply_rotary": "rotary",
    "log_softmax": "logprobs", "token_logprobs": "logprobs", "row_mean": "logprobs",
    "varlen_attention": "attention", "paged_attention": "attention", "write_kv_cache": "attention",
    "enable_exact_mode": "mode", "disable_exact_mode": "mode", "exact_mode": "mode",
    "is_exact_mode": "mode",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Deferred so `import exact_kernels` stays cheap and one op's module does not
    # pull in every other op's Triton compilation.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
