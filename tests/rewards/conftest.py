"""What the reward-model tests share beside tests/conftest.py's `rm_dir` (the tiny reward
model directory): random token-id sequences to score."""
import random

import pytest


def random_sequences(n: int = 40, seed: int = 0, max_len: int = 80) -> list[list[int]]:
    """n sequences of 1..max_len token ids in [3, 512), from `seed`."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 512) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


@pytest.fixture(scope="session")
def sequences():
    """random_sequences, for a test to call with its own n and seed."""
    return random_sequences
