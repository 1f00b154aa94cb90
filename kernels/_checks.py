"""Input validation shared by every op: bad input raises ValueError naming the op and
the shapes, never reaches a kernel (a wrong shape inside Triton is a silent wrong
result or an illegal memory access, not an error)."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def fail(op: str, msg: str) -> None:
    raise ValueError(f"{op}: {msg}")


def check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        fail(op, msg)


def check_float(op: str, name: str, t: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    # messages are built only on failure: these checks run on every call of every layer
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        fail(op, f"{name} has dtype {t.dtype}; supported: {', '.join(map(str, dtypes))}")


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    if not all(d == first for d in devs.values()):
        fail(op, "tensors are on different devices: " + ", ".join(f"{n}={d}" for n, d in devs.items()))
    if first.type not in ("cpu", "cuda"):
        fail(op, f"unsupported device {first}")
    return first


def shapes(**tensors: torch.Tensor) -> str:
    return ", ".join(f"{n}={tuple(t.shape)}" for n, t in tensors.items() if t is not None)
