"""The reward model's losses: Bradley-Terry on pairs (TRL's), InstructGPT's K-way ranking loss on whole rankings, and
the K-way loss with ties (Rao-Kupper).

A ranking of K responses orders C(K, 2) pairs. Expanding it into pairs costs 2 forward passes per pair; the K-way loss
scores each response once (K forward passes) and takes the same Bradley-Terry term over every ordered pair, averaged
per ranking (Ouyang et al., 2022, eq. 1). Ranks count from 1 = best; in the K-way loss tied responses give no pair.

Ties are information: a labeler who gives two replies the same rank says they are close. The Rao-Kupper model (1967)
adds a threshold ``tau = log(theta) > 0`` to Bradley-Terry. With ``d = r_i - r_j``,

    P(i beats j) = sigmoid(d - tau),    P(tie) = 1 - sigmoid(d - tau) - sigmoid(-d - tau),

and ``log P(tie) = log(exp(2 tau) - 1) + logsigmoid(d - tau) + logsigmoid(-d - tau)`` (both terms stable in d). At
``tau = 0`` no tie is possible and the strict term is Bradley-Terry's. ``kway_ties_loss`` takes it over every ordered
and every tied pair of a ranking, each response still forwarded once.
"""

from __future__ import annotations

import math

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


def tied_pairs(ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, K, K]`` booleans: ``[b, i, j]`` is True when i < j share a rank (both present): each tie counted once."""
    if mask is None:
        mask = torch.ones_like(ranks, dtype=torch.bool)
    upper = torch.ones(ranks.shape[1], ranks.shape[1], dtype=torch.bool, device=ranks.device).triu(diagonal=1)
    return (ranks[:, :, None] == ranks[:, None, :]) & upper & mask[:, :, None] & mask[:, None, :]


def rao_kupper_log_probs(diff: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``log P(i beats j)`` and ``log P(tie)`` for reward differences ``diff = r_i - r_j`` under Rao-Kupper with
    threshold ``tau > 0`` (see the module's docstring)."""
    if tau <= 0:
        raise ValueError(f"The tie threshold must be > 0 (at 0 no tie is possible), got {tau}.")
    win = F.logsigmoid(diff - tau)
    tie = math.log(math.expm1(2 * tau)) + win + F.logsigmoid(-diff - tau)
    return win, tie


def kway_ties_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None, tau: float = 1.0
) -> torch.Tensor:
    """The K-way loss with ties on ``rewards[B, K]`` and ``ranks[B, K]``: per ranking, the mean over its ordered pairs
    of ``-log P(i beats j)`` and over its tied pairs of ``-log P(tie)`` (Rao-Kupper, threshold ``tau``); the batch
    loss is the mean over rankings with any pair. A ranking whose responses all tie counts too."""
    better, tied = ordered_pairs(ranks, mask), tied_pairs(ranks, mask)
    win, tie = rao_kupper_log_probs(rewards[:, :, None] - rewards[:, None, :], tau)
    zeros = torch.zeros_like(win)  # where(), not a product: padded responses may hold any value
    pair_losses = torch.where(better, -win, zeros) + torch.where(tied, -tie, zeros)
    n_pairs = better.sum(dim=(1, 2)) + tied.sum(dim=(1, 2))
    per_ranking = pair_losses.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    has_pairs = n_pairs > 0
    return (per_ranking * has_pairs).sum() / has_pairs.sum().clamp(min=1)


def ranking_accuracy(rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the ordered pairs of all rankings that the rewards order the same way (ties in reward count wrong)."""
    better = ordered_pairs(ranks, mask)
    right = (rewards[:, :, None] > rewards[:, None, :]) & better
    return right.sum() / better.sum().clamp(min=1)
