"""Builds the CPU kernels (kernels/csrc/<stem>.cpp) at first use with torch's C++
extension loader; each stem is its own small library registering ops under
`torch.ops.exact_kernels`.

Why C++ and these flags: neither BLAS nor torch's CPU reductions promise a reduction
order that is independent of the batch (MKL/oneDNN pick kernels by shape; torch may
split a reduction across threads when the outer size is small). Our loops fix the
order explicitly. `-ffp-contract=off` stops the compiler from fusing a*b+c on its own
(it might fuse in a vectorised body and not in a scalar tail, so a row's bits would
depend on where it sits); where we want a fused multiply-add we write std::fma, which
is correctly rounded and so gives the same bits in scalar and vector code.
No -ffast-math: it licenses reassociation, i.e. a compiler-chosen reduction order.
"""
from __future__ import annotations

import os
import pathlib
import threading

import torch

_CSRC = pathlib.Path(__file__).resolve().parent / "csrc"
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-std=c++17"]
_lock = threading.Lock()
_loaded: set[str] = set()


def load_cpu_ops(stem: str):
    """Build (once per machine, cached by torch) and load csrc/<stem>.cpp; returns
    the `torch.ops.exact_kernels` namespace."""
    with _lock:
        if stem not in _loaded:
            from torch.utils import cpp_extension

            src = _CSRC / f"{stem}.cpp"
            if not src.exists():
                raise FileNotFoundError(f"CPU kernel source missing: {src}")
            cpp_extension.load(
                name=f"exact_kernels_{stem}",
                sources=[str(src)],
                extra_cflags=_CFLAGS,
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=os.environ.get("EXACT_KERNELS_VERBOSE_BUILD") == "1",
            )
            _loaded.add(stem)
    return torch.ops.exact_kernels
