"""The reward model's losses: Bradley-Terry on pairs (TRL's), and InstructGPT's K-way ranking loss on whole rankings.

A ranking of K responses orders C(K, 2) pairs. Expanding it into pairs costs 2 forward passes per pair; the K-way loss
scores each response once (K forward passes) and takes the same Bradley-Terry term over every ordered pair, averaged
per ranking (Ouyang et al., 2022, eq. 1). Ranks count from 1 = best; tied responses give no pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rank_gap_margin(rank_gap: torch.Tensor | int) -> torch.Tensor | int:
    """The margin a pair ranked ``rank_gap`` places apart must clear: 0 for neighbours, 1 more per rank between."""
    return rank_gap - 1


def pairwise_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry: ``-logsigmoid(r_chosen - r_rejected - margin)``, averaged over the pairs."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def ordered_pairs(ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, K, K]`` booleans: ``[b, i, j]`` is True when response i is ranked better than j (both present)."""
    if mask is None:
        mask = torch.ones_like(ranks, dtype=torch.bool)
    return (ranks[:, :, None] < ranks[:, None, :]) & mask[:, :, None] & mask[:, None, :]


def kway_ranking_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None, margin_from_rank_gap: bool = False
) -> torch.Tensor:
    """InstructGPT's ranking loss on ``rewards[B, K]`` with ``ranks[B, K]``; ``mask[B, K]`` marks real responses.

    Each ranking's loss is the mean of ``-logsigmoid(r_i - r_j [- margin])`` over its ordered pairs (i better than j),
    so a ranking counts once however many pairs it orders; the batch loss is the mean over rankings that order any.
    """
    better = ordered_pairs(ranks, mask)
    diff = rewards[:, :, None] - rewards[:, None, :]
    if margin_from_rank_gap:
        diff = diff - rank_gap_margin(ranks[:, None, :] - ranks[:, :, None])
    # where(), not a product: padded responses may hold any value, and 0 * inf would poison the sum.
    pair_losses = torch.where(better, -F.logsigmoid(diff), torch.zeros_like(diff))
    n_pairs = better.sum(dim=(1, 2))
    per_ranking = pair_losses.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    has_pairs = n_pairs > 0
    return (per_ranking * has_pairs).sum() / has_pairs.sum().clamp(min=1)


def ranking_accuracy(rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the ordered pairs of all rankings that the rewards order the same way (ties in reward count wrong)."""
    better = ordered_pairs(ranks, mask)
    right = (rewards[:, :, None] > rewards[:, None, :]) & better
    return right.sum() / better.sum().clamp(min=1)
