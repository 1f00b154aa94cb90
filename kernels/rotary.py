"""Batch-invariant rotary position embedding (neox style: rotate the two halves).

Table (`rotary_table`), fp32 [max_positions, D/2], the same fp32 operations as
reference.rotary_table_ref / Hugging Face:

    inv_freq[i]   = 1 / theta ** (float(2i) / D)      (torch, on the CPU, D/2 elements)
    angle[p, i]   = float(p) * inv_freq[i]
    cos, sin      = cos(angle), sin(angle)

The whole table is built once and only indexed afterwards, so a position's value
never depends on which other positions were computed. inv_freq is computed by
torch on the CPU exactly as the reference (its bits depend only on D and theta).
cos/sin: on CPU by the C++ op rows_rotary_table, element by element with the scalar
libm cosf/sinf (torch's CPU cos/sin mixes a vector path and a scalar path with
different bits, and where the split falls depends on the tensor length and the
thread count); on CUDA by torch's CUDA cos/sin, which run the same per-element code
for every element. So row p of the table depends on (p, D, theta, platform) and not
on max_positions; never claim the CPU table equals the CUDA one.

Apply (`apply_rotary`), x [T, heads, D], positions [T], with x1 = x[..., :D/2],
x2 = x[..., D/2:], c = cos[pos], s = sin[pos], fp32 arithmetic, one rounding to x.dtype:

    out1 = x1 * c - x2 * s
    out2 = x2 * c + x1 * s

Backward is the rotation by -angle (s -> -s) of the incoming gradient. No reduction:
every element runs the same code in any batch (one token per Triton program, one
token per C++ loop iteration). q and k are rotated by separate calls.

Bad positions (outside [0, max_positions)): ValueError on CPU; on CUDA the check would
need a device-to-host sync (and break CUDA-graph capture), so the kernel writes NaN
for that token instead of reading out of bounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check, check_float, check_same_device, shapes

_OP = "apply_rotary"
_INT_DTYPES = (torch.int32, torch.int64)


def _canonical(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def rotary_table(max_positions: int, head_dim: int, theta: float,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each fp32 [max_positions, head_dim // 2] on `device`."""
    op = "rotary_table"
    check(isinstance(max_positions, int) and max_positions > 0, op,
          f"max_positions must be a positive int, got {max_positions!r}")
    check(isinstance(head_dim, int) and head_dim > 0 and head_dim % 2 == 0, op,
          f"head_dim must be a positive even int, got {head_dim!r}")
    check(float(theta) > 0.0, op, f"theta must be > 0, got {theta!r}")
    device = torch.device(device)
    check(device.type in ("cpu", "cuda"), op, f"unsupported device {device}")
    # inv_freq always on the CPU, whatever the ambient default device: vLLM builds the
    # model inside `with torch.device("cuda")`, where a bare arange (and so the pow
    # below) would run on the GPU, and nothing promises that the GPU's pow rounds as
    # the CPU's does; the trainer builds its table outside any such context.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    half = head_dim // 2
    if device.type == "cuda":
        inv_freq = inv_freq.to(device)
        angle = torch.outer(torch.arange(max_positions, dtype=torch.int64, device=device).float(), inv_freq)
        return angle.cos(), angle.sin()
    from ._cpu_build import load_cpu_ops

    cos = torch.empty((max_positions, half), dtype=torch.float32, device="cpu")
    sin = torch.empty((max_positions, half), dtype=torch.float32, device="cpu")
    load_cpu_ops("rows").rows_rotary_table(inv_freq.contiguous(), cos, sin)
    return cos, sin


@triton.jit
def _rotary_kernel(X, POS, COS, SIN, Y, NH, P, sign, HALF: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(POS + t).to(tl.int64)
    valid = (pos >= 0) & (pos < P)
    pos = tl.where(valid, pos, 0)
    d = tl.arange(0, BD)
    dmask = d < HALF
    c = tl.load(COS + pos * HALF + d, mask=dmask, other=0.0)
    s = tl.load(SIN + pos * HALF + d, mask=dmask, other=0.0) * sign
    h = tl.arange(0, BH)
    mask = (h[:, None] < NH) & dmask[None, :]
    base = (t * NH + h[:, None]) * (2 * HALF) + d[None, :]
    x1 = tl.load(X + base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(X + base + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * c[None, :] - x2 * s[None, :]
    o2 = x2 * c[None, :] + x1 * s[None, :]
    o1 = tl.where(valid, o1, float("nan"))
    o2 = tl.where(valid, o2, float("nan"))
    tl.store(Y + base, o1.to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + base + HALF, o2.to(Y.dtype.element_ty), mask=mask)


def _rotate(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            inverse: bool) -> torch.Tensor:
    T, NH, D = x.shape
    out = torch.empty_like(x)
    if T == 0 or NH == 0:
        return out
    if x.is_cuda:
        _rotary_kernel[(T,)](x, positions, cos, sin, out, NH, cos.shape[0], -1.0 if inverse else 1.0,
                             HALF=D // 2, BH=triton.next_power_of_2(NH), BD=triton.next_power_of_2(D // 2),
                             num_warps=4)
    else:
        from ._cpu_build import load_cpu_ops
        load_cpu_ops("rows").rows_apply_rotary(x, positions, cos, sin, inverse, out)
    return out


class _ApplyRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positions, cos, sin):
        ctx.save_for_backward(positions, cos, sin)
        return _rotate(x, positions, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, g):
        positions, cos, sin = ctx.saved_tensors
        return _rotate(_canonical(g), positions, cos, sin, inverse=True), None, None, None


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], positions [T] (int32/int64), cos/sin fp32 [P, D/2] from
    rotary_table -> [T, heads, D] in x.dtype. Differentiable in x."""
    check_float(_OP, "x", x)
    check_float(_OP, "cos", cos, (torch.float32,))
    check_float(_OP, "sin", sin, (torch.float32,))
    check(isinstance(positions, torch.Tensor) and positions.dtype in _INT_DTYPES, _OP,
          f"positions must be an int32/int64 tensor, got {getattr(positions, 'dtype', type(positions).__name__)}")
    dev = check_same_device(_OP, x=x, positions=positions, cos=cos, sin=sin)
    sh = shapes(x=x, positions=positions, cos=cos, sin=sin)
    check(x.dim() == 3, _OP, f"expected x [T, heads, D]; got {sh}")
    check(x.shape[2] % 2 == 0, _OP, f"head_dim must be even; got {sh}")
    check(positions.dim() == 1 and positions.shape[0] == x.shape[0], _OP, f"expected positions [T]; got {sh}")
    check(cos.dim() == 2 and cos.shape == sin.shape and cos.shape[1] == x.shape[2] // 2, _OP,
          f"expected cos/sin [max_positions, D/2]; got {sh}")
    if dev.type == "cpu" and positions.numel() > 0:
        lo, hi = int(positions.min()), int(positions.max())
        check(lo >= 0 and hi < cos.shape[0], _OP,
              f"positions must lie in [0, {cos.shape[0]}), got [{lo}, {hi}]; {sh}")
        positions = positions.long()
    args = (_canonical(x), _canonical(positions), _canonical(cos), _canonical(sin))
    if torch.is_grad_enabled() and x.requires_grad:
        return _ApplyRotary.apply(*args)
    return _rotate(*args, inverse=False)
