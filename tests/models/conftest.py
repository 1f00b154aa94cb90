"""Shared fixtures for the model tests: tiny random Qwen3 checkpoints written by the
real factory (tokenizer trained locally) and read back through the real loader.

Weights use std 0.05 and jittered norms (not HF's 0.02 and ones) so logits are far
from uniform and every norm weight matters: a mixed-up tensor changes the numbers.
"""
import pytest
import torch

from rlhf_exact.models.tiny import make_tiny_model_dir

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def _make(tmp_path_factory, name, **kw):
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / name, seed=7, std=0.05, norm_noise=0.1,
                               num_hidden_layers=2, **kw)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Tied embeddings, 2 layers, hidden 128, 4 q / 2 kv heads of 32, vocab 512."""
    return _make(tmp_path_factory, "tiny-tied", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_untied_dir(tmp_path_factory):
    return _make(tmp_path_factory, "tiny-untied", tie_word_embeddings=False)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def random_sequences(n: int, lengths, vocab: int = 512, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]
