"""Test markers: `gpu` tests skip cleanly without CUDA; `slow` marks tests that take
more than a few seconds on a 2-core CPU (they still run in CI)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); this machine has no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
