"""The one switch for exact mode.

`enable_exact_mode()` is a single idempotent call that every actor (sampler and
trainer) makes before it creates a process group or a model. It

- routes aten::mm, aten::addmm, aten::bmm, aten::_log_softmax and aten::mean.dim on
  CPU and CUDA through this library, so third-party code that calls torch.mm (or
  nn.Linear's backward, or a loss's mean) gets the batch-invariant kernels too;
- turns off TF32 and reduced-precision reductions (they change the bits a matmul
  gives, and cuBLAS picks them by shape);
- pins NCCL to one deterministic schedule (collective reduction order decides the bits
  of reduced gradients);
- optionally seeds every RNG;
and returns a report of what it set and replaced. `exact_mode()` is the same as a
context manager that restores the previous state on exit.

Where exact mode cannot hold (an NCCL variable already set to something else, a
process group already started) it raises: there is no silent fallback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import warnings

import torch

# Each NCCL setting pins part of the collective's reduction order.
NCCL_ENV = {
    "NCCL_ALGO": "Tree",            # ring vs tree changes the summation order
    "NCCL_PROTO": "Simple",         # LL/LL128 protocols may pick different chunkings by size
    "NCCL_MIN_NCHANNELS": "1",      # channel count splits the buffer: a different split, a different order
    "NCCL_MAX_NCHANNELS": "1",
    "NCCL_NVLS_ENABLE": "0",        # NVLink SHARP reduces in the switch, order not ours
}
# cuBLAS is used only for code we did not route (none of mm/addmm/bmm); its workspace
# config makes what is left deterministic under use_deterministic_algorithms.
CUBLAS_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

_OVERRIDDEN = ("mm", "addmm", "bmm", "_log_softmax", "mean.dim")


@dataclasses.dataclass
class ExactModeReport:
    """What enable_exact_mode set: aten ops it replaced, settings it changed."""

    replaced_ops: list[str]
    settings: dict[str, str]

    def __str__(self) -> str:
        lines = ["exact mode on", "  replaced: " + ", ".join(self.replaced_ops)]
        lines += [f"  {k} = {v}" for k, v in self.settings.items()]
        return "\n".join(lines)


class _State:
    lib: torch.library.Library | None = None
    report: ExactModeReport | None = None
    saved: dict | None = None


def is_exact_mode() -> bool:
    return _State.report is not None


def _set_env(env: dict[str, str], settings: dict[str, str]) -> None:
    conflicts = [f"{k}={os.environ[k]} (needs {k}={v})" for k, v in env.items()
                 if os.environ.get(k) not in (None, v)]
    if conflicts:  # checked before anything is set: a refused switch changes nothing
        raise RuntimeError("exact mode cannot hold with " + "; ".join(conflicts) + ": unset or change them")
    os.environ.update(env)
    settings.update(env)


# --- aten adapters: reshape to the library's row layout, never call the overridden op.
# They run below autograd (the aten autograd kernel above them records the graph), so
# they call the library's raw forwards, or its public ops under no_grad.

def _mm(a, b):
    from .matmul import mm_forward
    return mm_forward(a, b)


def _addmm(bias, a, b, *, beta=1, alpha=1):
    from .matmul import addmm_forward
    return addmm_forward(bias, a, b, beta=beta, alpha=alpha)


def _bmm(a, b):
    from .matmul import bmm_forward
    return bmm_forward(a, b)


@torch.no_grad()
def _log_softmax(x, dim, half_to_float):
    from .logprobs import log_softmax
    dim = dim % x.dim() if x.dim() else 0
    moved = x.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1]) if x.dim() else x.reshape(1, 1)
    out = log_softmax(rows, 1.0).reshape(moved.shape).movedim(-1, dim).contiguous()
    return out if half_to_float or x.dtype == torch.float32 else out.to(x.dtype)


@torch.no_grad()
def _mean_dim(x, dim, keepdim=False, *, dtype=None):
    from .logprobs import row_mean
    nd = x.dim()
    dims = sorted({d % nd for d in dim}) if (dim and nd) else list(range(nd))
    keep = [d for d in range(nd) if d not in dims]
    src = x if dtype is None else x.to(dtype)
    rows = src.permute(*keep, *dims).reshape(-1, math.prod(x.shape[d] for d in dims))
    out = row_mean(rows.contiguous()).reshape([x.shape[d] for d in keep]).to(dtype or x.dtype)
    for d in dims if keepdim else ():
        out = out.unsqueeze(d)
    return out


def enable_exact_mode(seed: int | None = None) -> ExactModeReport:
    """Turn exact mode on (idempotent). Call before init_process_group and before
    building models. Returns what was set and replaced."""
    if _State.report is not None:
        if seed is not None:
            _seed_all(seed)
        return _State.report

    settings: dict[str, str] = {}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise RuntimeError("enable_exact_mode() must run before torch.distributed.init_process_group: "
                           "NCCL reads its algorithm settings when the communicator is created")
    _State.saved = {
        "env": {k: os.environ.get(k) for k in {**NCCL_ENV, **CUBLAS_ENV}},
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "bf16_reduced": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "fp16_reduced": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "f32_precision": torch.get_float32_matmul_precision(),
    }
    _set_env({**NCCL_ENV, **CUBLAS_ENV}, settings)

    # TF32 rounds fp32 matmul inputs to 10 mantissa bits; reduced-precision reductions
    # let cuBLAS accumulate bf16/fp16 split-K partials in low precision, by shape.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.set_float32_matmul_precision("highest")
    settings["tf32"] = "off"
    settings["reduced_precision_reduction"] = "off"

    lib = torch.library.Library("aten", "IMPL")
    impls = {"mm": _mm, "addmm": _addmm, "bmm": _bmm, "_log_softmax": _log_softmax, "mean.dim": _mean_dim}
    with warnings.catch_warnings():  # "overriding a previously registered kernel" is the point
        warnings.filterwarnings("ignore", message="(?s).*[Oo]verrid.*registered kernel")
        for key in ("CPU", "CUDA"):
            for name in _OVERRIDDEN:
                lib.impl(name, impls[name], key)
    _State.lib = lib
    if seed is not None:
        _seed_all(seed)
        settings["seed"] = str(seed)
    _State.report = ExactModeReport(replaced_ops=[f"aten::{n} (CPU, CUDA)" for n in _OVERRIDDEN], settings=settings)
    return _State.report


def disable_exact_mode() -> None:
    """Undo enable_exact_mode: stock aten kernels, previous backend flags and env."""
    if _State.report is None:
        return
    _State.lib._destroy()
    saved = _State.saved
    for k, v in saved["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    torch.backends.cuda.matmul.allow_tf32 = saved["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = saved["tf32_cudnn"]
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = saved["bf16_reduced"]
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = saved["fp16_reduced"]
    torch.set_float32_matmul_precision(saved["f32_precision"])
    _State.lib = _State.report = _State.saved = None


@contextlib.contextmanager
def exact_mode(seed: int | None = None):
    """Context manager form: exact mode inside, the previous state restored after."""
    was_on = is_exact_mode()
    report = enable_exact_mode(seed)
    try:
        yield report
    finally:
        if not was_on:
            disable_exact_mode()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
