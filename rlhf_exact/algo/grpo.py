"""GRPO-family objective pieces as small pure tensor functions.

Layout (one convention for every function here):

  * per-sequence tensors are [B], rows grouped contiguously: prompt i owns rows
    i*g .. (i+1)*g - 1 (g = group_size);
  * per-token tensors are [T] over the COMPLETION tokens of the step (or of one
    micro-batch), packed with no padding, with `seq_ids: LongTensor[T]` giving the
    sequence (row of the [B] tensors) of each token. Per-token advantages are
    `advantages[seq_ids]`.

Every loss aggregation is written as a weighted sum, loss = sum_t w_t * l_t, with
w_t computed from integer token counts (`torch.bincount`). So there is no
`index_add`/`scatter_add` (atomics on CUDA: not bitwise reproducible) and the
gradient of the loss with respect to l_t is exactly w_t. The result equals the
"mean per sequence, then mean over sequences" formulas mathematically; the rounding
differs from a two-stage mean by at most a few ulps.

Micro-batching: the normalisers (`num_seqs`, `loss_scale_tokens`) are arguments so
that the per-micro-batch losses of one optimizer step sum to the loss of the whole
minibatch (pass the minibatch totals, not the micro-batch's own counts).

Departures from the papers, each on purpose:
  * GRPO std is the unbiased (Bessel-corrected) group std, as in the DeepSeekMath
    reference implementations (TRL, verl use `torch.std`), so advantages are
    comparable with theirs. g = 1 with std normalisation is therefore rejected.
  * Dr.GRPO's aggregation divides by num_seqs * L (L = max response length or a
    given constant): the paper's "sum over tokens / L, mean over responses".

Reference: Shao et al. 2024 (GRPO), Yu et al. 2025 (DAPO: clip-higher, dynamic
sampling, token mean), Liu et al. 2025 (Dr.GRPO), Schulman 2020 "Approximating KL
divergence" (k1/k2/k3), Yao et al. 2025 (truncated importance sampling).
"""
from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
KL_ESTIMATORS = ("k1", "k2", "k3")


def _check_group_shape(rewards: torch.Tensor, group_size: int) -> int:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"number of rewards B={rewards.numel()} is not divisible by group_size={group_size}")
    return rewards.numel() // group_size


def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages.

    Args:
      rewards: [B] float, B = num_groups * group_size, groups contiguous.
      normalize_std: True: GRPO, A_i = (r_i - mean_G) / (std_G + eps), with the
        unbiased std (divide by g - 1; needs g >= 2). False: Dr.GRPO, A_i = r_i - mean_G.
      A NaN reward marks a sample without a reward (its reward function failed,
      reward.on_error=skip): it is left out of its group, whose mean and std come from
      the other members (n of them; the std divides by n - 1, and a group left with one
      member has std 0), and its advantage is NaN.
    Returns:
      [B] advantages, same dtype as rewards. A group whose rewards are all equal
      gets A = 0 exactly (both variants).
    """
    num_groups = _check_group_shape(rewards, group_size)
    if normalize_std and group_size < 2:
        raise ValueError("group_size must be >= 2 when normalize_std=True (the group std is undefined for 1 sample)")
    r = rewards.view(num_groups, group_size)
    if torch.isnan(r).any():
        return _advantages_without_nan(r, normalize_std, eps).reshape(-1)
    centered = r - r.mean(dim=1, keepdim=True)
    if normalize_std:
        centered = centered / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centered.reshape(-1)


def _advantages_without_nan(r: torch.Tensor, normalize_std: bool, eps: float) -> torch.Tensor:
    """group_advantages over the non-NaN members of each group [G, g]."""
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1, keepdim=True)
    filled = torch.where(valid, r, torch.zeros_like(r))
    centered = torch.where(valid, r - filled.sum(dim=1, keepdim=True) / n.clamp(min=1), torch.nan)
    if normalize_std:
        sq = torch.where(valid, centered, torch.zeros_like(r)).square().sum(dim=1, keepdim=True)
        centered = centered / ((sq / (n - 1).clamp(min=1)).sqrt() + eps)
    return centered


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic-sampling filter: which groups carry no learning signal.

    Args:
      rewards: [B], groups contiguous.
    Returns:
      BoolTensor [num_groups]: True where every reward of the group is equal (their
      advantages are all 0, so the group only dilutes the batch); NaN rewards (no
      reward) are left out, and a group with at most one reward left is all equal.
    """
    num_groups = _check_group_shape(rewards, group_size)
    r = rewards.view(num_groups, group_size)
    valid = ~torch.isnan(r)  # NaN: a sample without a reward, left out (group_advantages)
    hi = torch.where(valid, r, -torch.inf).amax(dim=1)
    lo = torch.where(valid, r, torch.inf).amin(dim=1)
    return (hi == lo) | (valid.sum(dim=1) <= 1)


def _check_tokens(seq_ids: torch.Tensor, **tensors: torch.Tensor) -> None:
    if seq_ids.dim() != 1 or seq_ids.dtype != torch.long:
        raise ValueError(f"seq_ids must be a 1-D int64 tensor [T], got {seq_ids.dtype} {tuple(seq_ids.shape)}")
    for name, t in tensors.items():
        if t.shape != seq_ids.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [T] = {tuple(seq_ids.shape)} like seq_ids")


def token_weights(seq_ids: torch.Tensor, num_seqs: int, aggregation: str,
                  loss_scale_tokens: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-token weights w [T] (of `dtype`) such that aggregate(x) = sum_t w_t x_t.

      token_mean:              w_t = 1 / N_tok, N_tok = loss_scale_tokens or T
                               (DAPO: every token of the minibatch counts once)
      seq_mean_token_mean:     w_t = 1 / (num_seqs * n_{s(t)}), n_s = tokens of seq s
                               (GRPO: mean over each sequence, then over sequences)
      seq_mean_token_sum: w_t = 1 / (num_seqs * L), L = loss_scale_tokens
                               (Dr.GRPO: L is the max response length, a constant)

    num_seqs: the number of sequences the seq-means divide by (the whole minibatch's
      count under micro-batching). A sequence's tokens must all be in this call for
      seq_mean_token_mean.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    if loss_scale_tokens is not None and loss_scale_tokens < 1:
        raise ValueError(f"loss_scale_tokens must be >= 1 or None, got {loss_scale_tokens}")
    T = seq_ids.numel()
    if aggregation == "token_mean":
        return torch.full((T,), 1.0 / (loss_scale_tokens or max(T, 1)), dtype=dtype, device=seq_ids.device)
    if num_seqs < 1:
        raise ValueError(f"num_seqs must be >= 1, got {num_seqs}")
    if aggregation == "seq_mean_token_mean":
        counts = torch.bincount(seq_ids)[seq_ids].to(dtype)
        return 1.0 / (counts * num_seqs)
    if loss_scale_tokens is None:
        raise ValueError("aggregation 'seq_mean_token_sum' needs loss_scale_tokens (the max response length)")
    return torch.full((T,), 1.0 / (num_seqs * loss_scale_tokens), dtype=dtype, device=seq_ids.device)


def aggregate(values: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int, aggregation: str,
              loss_scale_tokens: int | None = None) -> torch.Tensor:
    """Reduce per-token values [T] to a scalar with `token_weights` (see there)."""
    _check_tokens(seq_ids, values=values)
    w = token_weights(seq_ids, num_seqs, aggregation, loss_scale_tokens, dtype=values.dtype)
    return (values * w).sum()


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages_per_token: torch.Tensor,
                seq_ids: torch.Tensor, num_seqs: int, clip_eps_low: float, clip_eps_high: float,
                aggregation: str, loss_scale_tokens: int | None = None,
                tis_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate with asymmetric clipping (DAPO clip-higher).

    Per token, with rho = exp(logprobs - old_logprobs) and A the token's advantage:
        l_t = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) * c_t
    c_t = tis_weights[t] (truncated importance weights, detached) or 1. Then
    loss = aggregate(l, ...) (see `token_weights`).

    Args:
      logprobs: [T] current policy logprobs (carry the gradient).
      old_logprobs: [T] logprobs of the policy that sampled (detached here). In exact
        mode these are the sampler's logprobs, bitwise equal to the trainer's.
      advantages_per_token: [T] (advantages[seq_ids]).
      seq_ids: [T] int64, sequence of each token.
      num_seqs, aggregation, loss_scale_tokens: see `token_weights`.
      tis_weights: optional [T] from `tis_weights` (default kernels only).
    Returns:
      (loss scalar, metrics) with python floats (one device sync):
        clip_frac: fraction of tokens whose clipped term is the active one (no gradient),
        clip_frac_low / clip_frac_high: split by rho < 1 - eps_low / rho > 1 + eps_high,
        ratio_min / ratio_max / ratio_mean: of rho over the tokens (plain token mean).
    """
    _check_tokens(seq_ids, logprobs=logprobs, old_logprobs=old_logprobs,
                  advantages_per_token=advantages_per_token)
    if tis_weights is not None:
        _check_tokens(seq_ids, tis_weights=tis_weights)
    if not (0.0 <= clip_eps_low < 1.0) or clip_eps_high < 0.0:
        raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low}, {clip_eps_high}")
    if logprobs.numel() == 0:
        raise ValueError("policy_loss: no tokens (T = 0)")
    adv = advantages_per_token.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = aggregate(per_token, seq_ids, num_seqs, aggregation, loss_scale_tokens)

    with torch.no_grad():
        active = clipped > unclipped  # the clipped branch wins: the token gives no gradient
        low = active & (ratio < 1.0 - clip_eps_low)
        high = active & (ratio > 1.0 + clip_eps_high)
        stats = torch.stack([active.float().mean(), low.float().mean(), high.float().mean(),
                             ratio.min(), ratio.max(), ratio.mean()]).tolist()
    keys = ("clip_frac", "clip_frac_low", "clip_frac_high", "ratio_min", "ratio_max", "ratio_mean")
    return loss, dict(zip(keys, stats))


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(p || q), p = current policy, q = reference, at tokens
    sampled from (about) p. With d = logp - logq:

      k1 = d                       unbiased value; as a loss its expected gradient is 0
      k2 = d^2 / 2                 biased value; as a loss its gradient is grad KL(p||q)
      k3 = exp(-d) - (-d) - 1      unbiased value, >= 0; as a loss its expected gradient
                                   is grad KL(q||p) (the reverse KL; GRPO's choice)

    Args: logprobs [T] (carry the gradient), ref_logprobs [T] (detached here).
    Returns: [T], aggregate with `aggregate` and add beta * it to the loss.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ")
    d = logprobs - ref_logprobs.detach()
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


def entropy_bonus(entropy: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int, aggregation: str,
                  loss_scale_tokens: int | None = None) -> torch.Tensor:
    """Aggregate per-token entropies [T] (computed by the trainer from the full-vocab
    log-softmax) like the loss; the caller subtracts coef * it from the loss."""
    return aggregate(entropy, seq_ids, num_seqs, aggregation, loss_scale_tokens)


def tis_weights(trainer_old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_trainer_old / pi_sampler, cap) [T], detached.

    Corrects the sampler/trainer mismatch of the default (non-exact) kernels; in exact
    mode the ratio is exactly 1 and this is not used.
    """
    if trainer_old_logprobs.shape != sampler_logprobs.shape:
        raise ValueError(f"trainer_old_logprobs {tuple(trainer_old_logprobs.shape)} and sampler_logprobs "
                         f"{tuple(sampler_logprobs.shape)} differ")
    if not cap > 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    with torch.no_grad():
        return torch.exp(trainer_old_logprobs - sampler_logprobs).clamp(max=cap)


def parity_metrics(sampler_lp: torch.Tensor, trainer_lp: torch.Tensor) -> dict[str, float]:
    """Sampler vs trainer logprobs over the sampled tokens [T] (fp32 both).

    With r = trainer - sampler (per token; tokens sampled from the sampler):
      parity/kl                      mean(exp(r) - r - 1): k3 estimate of KL(sampler || trainer)
      parity/logprob_abs_diff_max    max |r|
      parity/logprob_abs_diff_mean   mean |r|
      parity/tokens_bitwise_equal_frac  fraction with torch.eq(trainer, sampler): the
                                     numerics contract's notion of equality (torch.equal),
                                     so -0.0 == +0.0 counts as equal and NaN never does
      parity/ratio_min, parity/ratio_max  of exp(r)
    Exact mode gives exactly 0, 0, 0, 1, 1, 1. A NaN logprob makes kl, the diffs and
    the ratios NaN, which is what a dashboard should show.
    """
    if sampler_lp.dtype != torch.float32 or trainer_lp.dtype != torch.float32:
        raise ValueError(f"parity_metrics compares fp32 logprobs, got {sampler_lp.dtype} and {trainer_lp.dtype}")
    if sampler_lp.shape != trainer_lp.shape or sampler_lp.dim() != 1:
        raise ValueError(f"sampler_lp {tuple(sampler_lp.shape)} and trainer_lp {tuple(trainer_lp.shape)} "
                         "must both be [T]")
    if sampler_lp.numel() == 0:
        raise ValueError("parity_metrics: no tokens (T = 0)")
    with torch.no_grad():
        r = trainer_lp - sampler_lp
        ratio = torch.exp(r)
        absdiff = r.abs()
        kl, dmax, dmean, n_equal, rmin, rmax = torch.stack([
            (ratio - r - 1.0).mean(), absdiff.max(), absdiff.mean(),
            torch.eq(trainer_lp, sampler_lp).sum().to(r.dtype), ratio.min(), ratio.max()]).tolist()
    # the equal fraction from the integer count in Python: exact, not an fp32 mean
    return {"parity/kl": kl, "parity/logprob_abs_diff_max": dmax, "parity/logprob_abs_diff_mean": dmean,
            "parity/tokens_bitwise_equal_frac": int(n_equal) / sampler_lp.numel(),
            "parity/ratio_min": rmin, "parity/ratio_max": rmax}


def minibatches(num_seqs: int, num_minibatches: int, group_size: int = 1,
                shuffle_seed: int | None = None) -> list[torch.Tensor]:
    """Split a step's sequences [0, num_seqs) into `num_minibatches` index lists.

    Whole groups stay together when there are at least as many groups as minibatches
    (groups spread as evenly as possible, earlier minibatches get the extra group);
    otherwise sequences are split as evenly as possible. Minibatches are contiguous
    runs of groups; with `shuffle_seed` the GROUP order is first permuted by a CPU
    generator seeded with it (pass e.g. seed + epoch for a new order per epoch).
    Returns: list of LongTensor [n_i] of sequence indices, sum n_i = num_seqs; each
    sequence appears exactly once.
    """
    if group_size < 1 or num_seqs < 1 or num_seqs % group_size:
        raise ValueError(f"num_seqs={num_seqs} must be a positive multiple of group_size={group_size}")
    if not 1 <= num_minibatches <= num_seqs:
        raise ValueError(f"num_minibatches={num_minibatches} must be in [1, num_seqs={num_seqs}]")
    num_groups = num_seqs // group_size
    order = torch.arange(num_groups)
    if shuffle_seed is not None:
        order = torch.randperm(num_groups, generator=torch.Generator().manual_seed(shuffle_seed))
    seqs = (order[:, None] * group_size + torch.arange(group_size)).reshape(-1)
    if num_groups >= num_minibatches:
        return [chunk.reshape(-1) for chunk in torch.tensor_split(seqs.view(num_groups, group_size), num_minibatches)]
    return list(torch.tensor_split(seqs, num_minibatches))


__all__ = [
    "AGGREGATIONS", "KL_ESTIMATORS", "aggregate", "entropy_bonus", "equal_reward_groups", "group_advantages",
    "kl_penalty", "minibatches", "parity_metrics", "policy_loss", "tis_weights", "token_weights",
]
