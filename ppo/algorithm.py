"""The PPO math, as small pure functions on tensors; each is checked by hand in tests/test_ppo_algorithm.py.

Shapes: ``[B, T]`` for per-token values of B responses of T tokens; ``mask`` is True on a response's own tokens
(up to and including its last one), False on the padding after it. The formulas follow Huang et al., "The N+
Implementation Details of RLHF with PPO" (arXiv 2403.17031), which describes the loop TRL's PPOTrainer implemented.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def whiten(
    values: torch.Tensor, mask: torch.Tensor, total: tuple[float, float, float] | None = None, shift_mean: bool = True
) -> torch.Tensor:
    """(values - mean) / std over the masked entries (unbiased variance), zero on the padding.

    ``total`` is (count, sum, sum of squares) over all processes, so every rank whitens with the same statistics and
    two processes give one process's advantages; without it, the statistics of ``values`` alone. ``shift_mean=False``
    adds the mean back (rewards keep their sign).
    """
    count, total_sum, total_sq = total if total is not None else whitening_sums(values, mask)
    mean = total_sum / max(count, 1)
    var = max(total_sq / max(count, 1) - mean**2, 0.0) * count / max(count - 1, 1)
    whitened = (values - mean) / (var + 1e-8) ** 0.5
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def whitening_sums(values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    mask = mask.to(values.dtype)
    return float(mask.sum()), float((values * mask).sum()), float((values**2 * mask).sum())


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL of the policy to the reference on the sampled tokens (http://joschu.net/blog/kl-approx.html).

    k1 = log pi - log ref (unbiased, can be negative); k3 = (r - 1) - log r with r = ref / pi (unbiased, >= 0).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}.")


def token_rewards(
    kl: torch.Tensor, scores: torch.Tensor, last_index: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * kl`` on every response token, plus the sequence's score at its last token.

    Returns (rewards, non_score_rewards), both zero on the padding.
    """
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rewards[torch.arange(len(scores), device=scores.device), last_index] += scores
    return rewards, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015): advantages and returns (= advantages + values).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after a response's last
    token is 0 (the episode ends there), so padding never leaks into the advantages.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, summed over the masked tokens (the caller divides by the token count).

    loss_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps)), ratio_t = exp(logp_t - old_logp_t).
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_sum(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_sum((clipped > unclipped).float(), mask),
            "approxkl": masked_sum(0.5 * log_ratio**2, mask),
            "ratio": masked_sum(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss, summed over the masked tokens: 0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2).

    Returns (loss, count of tokens where the clipped term was the larger).
    """
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_sum(torch.maximum(unclipped, clipped), mask)
    return loss, masked_sum((clipped > unclipped).float().detach(), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of ``logits`` over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def gathered_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position, without materialising the whole log-softmax in float32."""
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def aggregate_scores(scores: torch.Tensor, how: str, k: float = 1.0) -> torch.Tensor:
    """One score per response from M reward models (``scores[M, B]``): their mean, their minimum (the worst case), or
    ``mean - k * std`` (uncertainty-weighted, Coste et al. 2023, arXiv 2310.02743; std over the M models, unbiased)."""
    if how == "mean":
        return scores.mean(dim=0)
    if how == "min":
        return scores.min(dim=0).values
    if how == "mean_minus_std":
        if scores.shape[0] < 2:
            raise ValueError("mean_minus_std needs at least 2 reward models: the std of one is undefined.")
        return scores.mean(dim=0) - k * scores.std(dim=0)
    raise ValueError(f"reward_aggregation must be one of mean, min, mean_minus_std; got {how!r}.")


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (torch wraps on overflow; the masks make the right shifts logical)."""
    x = x - 7046029254386353131  # + 0x9E3779B97F4A7C15, as a signed int64
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def gumbel_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise ``[B, vocab]`` that depends only on (seed of row b, step, token id), never on the batch.

    argmax(logits / T + noise) is an exact sample of softmax(logits / T) (the Gumbel-max trick). Each sampled response
    is then a function of its own seed alone: the same with 1 or 8 processes, in any batch, and after a resume.
    """
    row = _splitmix64(_splitmix64(seeds.to(torch.int64)) + step)
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = _splitmix64(row[:, None] + tokens[None, :])
    # 24 random bits, exact in float32: the noise then tops out near 17, where its tail has mass 1e-7.
    uniform = (((x >> 40) & ((1 << 24) - 1)).to(torch.float32) + 0.5) / float(1 << 24)
    return -torch.log(-torch.log(uniform))
