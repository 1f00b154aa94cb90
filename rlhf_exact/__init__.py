"""rlhf_exact: on-policy RL (GRPO family) in which the sampler and the trainer compute
bit-identical token logprobs. See README.md and docs/bitwise_parity.md."""
__version__ = "0.1.0"
