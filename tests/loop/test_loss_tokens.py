"""The loop's per-loss-token assembly for multi-turn episodes, with hand values: the
sampler's logprobs at the model's tokens, the trainer's at observations an environment
marked trained."""
import torch

from rlhf_exact.algo.rollout import on_loss_tokens


def teston_loss_tokens():
    model = torch.tensor([-1.0, -2.0, -3.0])
    fill = torch.tensor([-9.0, -9.5, -8.0, -7.0])
    assert on_loss_tokens(model, fill, None) is model  # every loss token is a model token
    got = on_loss_tokens(model, fill, torch.tensor([True, False, True, True]))
    assert torch.equal(got, torch.tensor([-1.0, -9.5, -2.0, -3.0]))
    assert torch.equal(fill, torch.tensor([-9.0, -9.5, -8.0, -7.0]))  # not written in place
