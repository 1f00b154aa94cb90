"""Kernel tests run once per backend: `cpu` (C++ kernels, in CI) and `cuda` (Triton
kernels, `gpu` marker, skipped without CUDA)."""
import pytest
import torch

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def gen(device) -> torch.Generator:
    """A seeded generator on the CPU; tests draw on CPU and move, so CPU and CUDA runs
    see the same inputs."""
    return torch.Generator().manual_seed(1234)
