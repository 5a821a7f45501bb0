"""The reward losses, on values worked out by hand, and the K-way loss against pairwise expansion."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from reward.losses import kway_ranking_loss, pairwise_loss, rank_gap_margin, ranking_accuracy


def softplus(x: float) -> float:
    """-logsigmoid(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def test_pairwise_loss_hand_worked():
    # rewards 1 vs 0: -log sigmoid(1) = log(1 + e^-1) = 0.3133
    assert pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.3133, abs=1e-4)
    # a margin of 1 eats the whole difference: log(1 + e^0) = log 2
    loss = pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # the mean over pairs: (log(1 + e^-2) + log 2) / 2 = (0.1269 + 0.6931) / 2
    loss = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((0.126928 + 0.693147) / 2, abs=1e-5)


def test_kway_loss_hand_worked():
    # K = 2 is one pair: the pairwise value.
    loss = kway_ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 2]]))
    assert loss.item() == pytest.approx(0.3133, abs=1e-4)
    # K = 3, rewards [2, 1, 0] ranked 1, 2, 3: differences 1, 2, 1 over C(3, 2) = 3 pairs.
    loss = kway_ranking_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]))
    assert loss.item() == pytest.approx((2 * softplus(1) + softplus(2)) / 3, abs=1e-6)  # 0.2512
    # The same, with margins from the rank gaps (0, 1, 0): every difference becomes 1.
    loss = kway_ranking_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]), margin_from_rank_gap=True)
    assert loss.item() == pytest.approx(softplus(1), abs=1e-6)


def test_kway_loss_skips_ties_and_padding():
    # Ranks [1, 1, 2]: the tied pair gives nothing; pairs (0, 2) and (1, 2) have differences 3 and 1.
    loss = kway_ranking_loss(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([[1, 1, 2]]))
    assert loss.item() == pytest.approx((softplus(3) + softplus(1)) / 2, abs=1e-6)
    # A padded third slot (rank 0 would otherwise beat everything) is ignored.
    loss = kway_ranking_loss(
        torch.tensor([[1.0, 0.0, 99.0]]), torch.tensor([[1, 2, 0]]), torch.tensor([[True, True, False]])
    )
    assert loss.item() == pytest.approx(0.3133, abs=1e-4)
    # A ranking that ties everything has no pair and does not count; the batch mean is over the other one.
    loss = kway_ranking_loss(torch.tensor([[5.0, -5.0], [1.0, 0.0]]), torch.tensor([[1, 1], [1, 2]]))
    assert loss.item() == pytest.approx(0.3133, abs=1e-4)


def test_each_ranking_counts_once_however_many_pairs_it_orders():
    # Ranking A: one pair (difference 1). Ranking B: three pairs, all with difference 0 (log 2 each).
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ranks = torch.tensor([[1, 2, 0], [1, 2, 3]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = kway_ranking_loss(rewards, ranks, mask)
    assert loss.item() == pytest.approx((softplus(1) + math.log(2)) / 2, abs=1e-6)


@pytest.mark.parametrize("margin", [False, True])
def test_kway_loss_equals_pairwise_loss_over_the_same_pairs(margin):
    """One ranking of K = 5 with a tie: the K-way loss and its gradient equal the pairwise loss over its pairs."""
    torch.manual_seed(0)
    rewards = torch.randn(1, 5, requires_grad=True)
    ranks = torch.tensor([[2, 1, 4, 2, 3]])
    kway = kway_ranking_loss(rewards, ranks, margin_from_rank_gap=margin)
    (kway_grad,) = torch.autograd.grad(kway, rewards)

    pairs = [(i, j) for i, j in itertools.permutations(range(5), 2) if ranks[0, i] < ranks[0, j]]
    assert len(pairs) == 9  # C(5, 2) = 10 minus the tied pair
    chosen = torch.stack([rewards[0, i] for i, _ in pairs])
    rejected = torch.stack([rewards[0, j] for _, j in pairs])
    gaps = torch.tensor([(ranks[0, j] - ranks[0, i]).item() for i, j in pairs])
    pairwise = pairwise_loss(chosen, rejected, rank_gap_margin(gaps) if margin else None)
    (pairwise_grad,) = torch.autograd.grad(pairwise, rewards)

    torch.testing.assert_close(kway, pairwise)
    torch.testing.assert_close(kway_grad, pairwise_grad)


def test_ranking_accuracy_hand_worked():
    # Rewards [3, 1, 2] for ranks [1, 2, 3]: pairs (0, 1) and (0, 2) right, (1, 2) wrong -> 2/3.
    accuracy = ranking_accuracy(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[1, 2, 3]]))
    assert accuracy.item() == pytest.approx(2 / 3)


def test_rank_gap_margin():
    assert rank_gap_margin(1) == 0 and rank_gap_margin(3) == 2
    torch.testing.assert_close(rank_gap_margin(torch.tensor([1, 2])).float(), torch.tensor([0.0, 1.0]))
