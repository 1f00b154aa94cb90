"""The sampler interface (rlhf_exact/sampler/backend.py) and its second implementation,
the paged oracle (oracle_sampler.py):

  * `engine.Sampler` (vLLM) and `OracleSampler` both have every SamplerBackend method
    with the protocol's parameters (names, order, kinds, defaults: inspect, not a
    name-only isinstance) and take the group's constructor keywords; a class that
    differs is named with what differs;
  * OracleSampler's logprobs for its own samples equal the trainer model's logprobs of
    the same ids (torch.equal), before and after an in-place weight update;
  * a bad weight update changes nothing (whole or nothing); bad requests are
    per-request errors.

    python -m pytest tests/models/test_oracle_sampler.py -q
"""
import pytest
import torch

from rlhf_exact.models.hf_io import load_model
from rlhf_exact.models.qwen3 import pack_sequences, packed_logprobs
from rlhf_exact.sampler.backend import SamplerBackend, check_facts, load_backend, mismatches
from rlhf_exact.sampler.engine import RequestParams, Sampler

from .conftest import random_sequences
from .oracle_sampler import OracleSampler

TEMPERATURE = 0.8
ORACLE = "tests.models.oracle_sampler:OracleSampler"


@pytest.fixture(scope="module")
def oracle(tiny_dir):
    from exact_kernels import disable_exact_mode, is_exact_mode

    was_on = is_exact_mode()
    sampler = OracleSampler(tiny_dir, temperature=TEMPERATURE, max_model_len=64, max_num_seqs=4,
                            max_num_batched_tokens=16, seed=1, device="cpu")
    yield sampler
    if not was_on:
        disable_exact_mode()  # the sampler ran the process's exact-mode switch, as in its actor


def trainer_logprobs(model, prompt, completion) -> torch.Tensor:
    """The trainer's fp32 logprobs of the completion tokens after the prompt."""
    seq = list(prompt) + list(completion)
    with torch.no_grad():
        lp = packed_logprobs(model, pack_sequences([seq]), TEMPERATURE)
    return lp[len(prompt) - 1:len(seq) - 1]


def test_both_backends_implement_the_protocol():
    assert mismatches(Sampler) == [] and mismatches(OracleSampler) == []
    assert load_backend("vllm") is Sampler and load_backend(ORACLE) is OracleSampler


def test_a_differing_signature_is_named():
    class Renamed(OracleSampler):
        def sample(self, prompts, n=1, params=None, seed=None):  # seeds renamed: a caller's keyword breaks
            return []

    class NoUpdate:
        def __init__(self, model, **kw):
            pass

        sample, get_weights, shutdown = OracleSampler.sample, OracleSampler.get_weights, OracleSampler.shutdown

    assert mismatches(Renamed) == ["sample(self, prompts, n=1, params=None, seed=None) is not "
                                   "sample(self, prompts, n=1, params=None, seeds=None)"]
    assert mismatches(NoUpdate) == ["no method update_weights()"]
    with pytest.raises(ValueError, match="has no attribute 'Oracle'; did you mean "
                                         "'tests.models.oracle_sampler:OracleSampler'"):
        load_backend("tests.models.oracle_sampler:Oracle")
    assert SamplerBackend.__annotations__.keys() >= {"temperature", "vocab_size", "max_model_len"}


def test_oracle_logprobs_equal_the_trainers(oracle, tiny_dir):
    check_facts(oracle)
    trainer, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    prompts = random_sequences(5, [3, 17, 1, 30, 8], seed=11)
    greedy = [RequestParams(max_tokens=12, temperature=0 if i == 2 else None) for i in range(5)]
    results = oracle.sample(prompts, n=3, params=greedy, seeds=[10, 20, None, 40, 50])
    assert [r.error for r in results] == [None] * 5 and all(len(r.completions) == 3 for r in results)
    for prompt, r in zip(prompts, results):
        for c in r.completions:
            assert c.logprobs.dtype == torch.float32 and len(c.token_ids) == len(c.logprobs) >= 1
            assert torch.equal(c.logprobs, trainer_logprobs(trainer, prompt, c.token_ids))
    # seeds: sample j of prompt i is drawn with seeds[i] + j, whatever else is in the batch
    again = oracle.sample([prompts[3], prompts[0]], n=1, params=RequestParams(max_tokens=12), seeds=[41, 10])
    assert again[0].completions[0].token_ids == results[3].completions[1].token_ids
    assert again[1].completions[0].token_ids == results[0].completions[0].token_ids


def test_oracle_update_weights_in_place_whole_or_nothing(oracle, tiny_dir):
    trainer, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    name = "model.norm.weight"
    before = oracle.get_weights([name])[name]
    bad = {name: before + 1, "model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3, dtype=torch.bfloat16)}
    with pytest.raises(ValueError, match=r"rejected, weights unchanged: model.layers.0.mlp.up_proj.weight: shape"):
        oracle.update_weights(bad)
    assert torch.equal(oracle.get_weights([name])[name], before)

    new = before + 0.25
    try:
        assert oracle.update_weights({name: new}) >= 0
        assert torch.equal(oracle.get_weights([name])[name], new)
        dict(trainer.named_parameters())[name].data.copy_(new)
        prompt = random_sequences(1, [9], seed=12)[0]
        (r,) = oracle.sample([prompt], n=2, params=RequestParams(max_tokens=10), seeds=[3])
        for c in r.completions:
            assert torch.equal(c.logprobs, trainer_logprobs(trainer, prompt, c.token_ids))
    finally:
        oracle.update_weights({name: before})


def test_oracle_bad_requests_are_per_request_errors(oracle):
    ok = random_sequences(1, [4], seed=13)[0]
    results = oracle.sample([[], ok, [600], [5] * 64, ok], n=1,
                            params=[RequestParams(max_tokens=4)] * 4 + [RequestParams(max_tokens=4, top_p=0.5)])
    errors = [r.error for r in results]
    assert errors[0] == "empty prompt" and errors[1] is None and len(results[1].completions) == 1
    assert "token ids must be ints in [0, 512)" in errors[2]
    assert "does not fit max_model_len=64" in errors[3]
    assert "full distribution only" in errors[4]
