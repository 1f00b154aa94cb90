"""What the reward-model tests share: a tiny reward model directory written by the
factory (models/tiny.py) once per test module, and random token-id sequences to score."""
import random

import pytest

from rlhf_exact.models.tiny import make_tiny_reward_model_dir


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny reward model (2 layers, vocabulary 512) with weights that make scores vary."""
    return make_tiny_reward_model_dir(tmp_path_factory.mktemp("rm") / "tiny-rm", seed=3, std=0.05, norm_noise=0.1,
                                      num_hidden_layers=2)


def random_sequences(n: int = 40, seed: int = 0, max_len: int = 80) -> list[list[int]]:
    """n sequences of 1..max_len token ids in [3, 512), from `seed`."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 512) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


@pytest.fixture(scope="session")
def sequences():
    """random_sequences, for a test to call with its own n and seed."""
    return random_sequences
