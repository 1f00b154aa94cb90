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

# Imported eagerly: `rms_norm` is both a submodule and its function, and only an
# import that runs before the package attribute is read binds the function.
from .activation import silu_and_mul
from .attention import paged_attention, varlen_attention, write_kv_cache
from .logprobs import log_softmax, row_mean, token_logprobs
from .matmul import addmm, bmm, linear, mm
from .mode import disable_exact_mode, enable_exact_mode, exact_mode, is_exact_mode
from .rms_norm import rms_norm
from .rotary import apply_rotary, rotary_table

__all__ = [
    "addmm", "apply_rotary", "bmm", "disable_exact_mode", "enable_exact_mode", "exact_mode",
    "is_exact_mode", "linear", "log_softmax", "mm", "paged_attention", "rms_norm", "rotary_table",
    "row_mean", "silu_and_mul", "token_logprobs", "varlen_attention", "write_kv_cache",
]
