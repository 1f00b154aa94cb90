"""RL algorithm pieces (advantages, losses, KL estimators, parity metrics): pure
tensor functions with no model, Ray or vLLM dependency. See grpo.py for the layout
convention ([B] per-sequence, [T] packed completion tokens with seq_ids)."""
from .grpo import (AGGREGATIONS, KL_ESTIMATORS, aggregate, entropy_bonus, equal_reward_groups, group_advantages,
                   kl_penalty, minibatches, parity_metrics, policy_loss, tis_weights, token_weights)

__all__ = [
    "AGGREGATIONS", "KL_ESTIMATORS", "aggregate", "entropy_bonus", "equal_reward_groups", "group_advantages",
    "kl_penalty", "minibatches", "parity_metrics", "policy_loss", "tis_weights", "token_weights",
]
