"""Facts about the CUDA device a kernel launches on, looked up once per process (a
property query costs microseconds, more than some launches)."""
from __future__ import annotations

import functools

import torch


@functools.cache
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device `index`: the grid of a persistent matmul,
    and whether a decode step leaves SMs idle (attention's split-parallel form)."""
    return torch.cuda.get_device_properties(index).multi_processor_count
