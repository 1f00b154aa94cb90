"""types.HostTensors, the form named CPU tensors take through Ray (a checkpoint's state,
a restore, the gathered weights): every dtype and shape comes back bit for bit, in
process and through a real Ray actor."""
import pytest
import torch

from rlhf_exact.types import HostTensors


def odd_tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 10, generator=g)
    return {"fp32": base, "bf16": base.to(torch.bfloat16), "fp16": base.to(torch.float16),
            "nan_inf": torch.tensor([float("nan"), float("inf"), -0.0, 1e-45]),
            "int64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4), "bool": base > 0,
            "uint8": torch.randint(0, 255, (17,), dtype=torch.uint8, generator=g),
            "scalar": torch.tensor(3.5), "empty": torch.empty(0, 4), "strided": base.t()[::2]}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape, k
        assert torch.equal(b[k].reshape(-1).view(torch.uint8) if b[k].numel() else b[k],
                           a[k].contiguous().reshape(-1).view(torch.uint8) if a[k].numel() else a[k]), k


def test_round_trip_in_process():
    src = odd_tensors()
    packed = HostTensors.of(src)
    views, copies = packed.tensors(), packed.tensors(writable=True)
    assert_bitwise(src, views)
    assert_bitwise(src, copies)
    assert copies["fp32"].data_ptr() != views["fp32"].data_ptr()
    assert views["fp32"].data_ptr() == packed.arrays["fp32"].ctypes.data  # no copy on the way back


def test_round_trip_through_ray(local_ray):
    ray = local_ray

    @ray.remote
    def echo(p: HostTensors) -> HostTensors:
        return HostTensors.of(p.tensors(writable=True))

    src = odd_tensors()
    assert_bitwise(src, ray.get(echo.remote(HostTensors.of(src))).tensors())


def test_unknown_dtype_name_is_an_error():
    packed = HostTensors({"x": HostTensors.of({"x": torch.ones(2)}).arrays["x"]}, {"x": ("float99", (2,))})
    with pytest.raises(AttributeError, match="float99"):
        packed.tensors()
