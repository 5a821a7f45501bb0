"""The reward losses, on values worked out by hand, the K-way loss against pairwise expansion, and the K-way loss with
ties (Rao-Kupper) against its closed form in strengths pi = e^r."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from reward.losses import (
    kway_ranking_loss,
    kway_ties_loss,
    pairwise_loss,
    rank_gap_margin,
    ranking_accuracy,
    rao_kupper_log_probs,
)


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


# --- ties (Rao-Kupper): P(i beats j) = pi_i / (pi_i + theta pi_j),
#     P(tie) = (theta^2 - 1) pi_i pi_j / ((pi_i + theta pi_j)(pi_j + theta pi_i)), pi = e^r, theta = e^tau


def rk_win(r_i: float, r_j: float, theta: float) -> float:
    return math.exp(r_i) / (math.exp(r_i) + theta * math.exp(r_j))


def rk_tie(r_i: float, r_j: float, theta: float) -> float:
    pi, pj = math.exp(r_i), math.exp(r_j)
    return (theta**2 - 1) * pi * pj / ((pi + theta * pj) * (pj + theta * pi))


def test_rao_kupper_probabilities_hand_worked_and_summing_to_one():
    # r = 1 vs 0, theta = 2: P(win) = e / (e + 2) = 0.5761; P(tie) = 3e / ((e + 2)(1 + 2e)) = 0.2685; P(loss) = 1 / (1 + 2e)
    win, tie = rao_kupper_log_probs(torch.tensor([1.0, -1.0]), math.log(2))
    assert win[0].exp().item() == pytest.approx(math.e / (math.e + 2), abs=1e-6)
    assert tie[0].exp().item() == pytest.approx(3 * math.e / ((math.e + 2) * (1 + 2 * math.e)), abs=1e-6)
    assert win[1].exp().item() == pytest.approx(1 / (1 + 2 * math.e), abs=1e-6)  # the same pair seen from j
    assert (win[0].exp() + tie[0].exp() + win[1].exp()).item() == pytest.approx(1.0, abs=1e-6)
    # Stable far out: a difference of 200 gives P(tie) ~ (theta^2 - 1) / theta * e^-200, finite in log space.
    _, far = rao_kupper_log_probs(torch.tensor([200.0]), math.log(2))
    assert far.item() == pytest.approx(math.log(1.5) - 200, abs=1e-3)
    with pytest.raises(ValueError, match="must be > 0"):
        rao_kupper_log_probs(torch.tensor([0.0]), 0.0)


def test_kway_ties_loss_hand_worked():
    # Ranks [1, 1, 2], rewards [1, 0, -1], theta = 2: the tie (0, 1) and the wins (0, 2) and (1, 2), mean of 3 terms.
    rewards, ranks, theta = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[1, 1, 2]]), 2.0
    expected = -(math.log(rk_tie(1, 0, theta)) + math.log(rk_win(1, -1, theta)) + math.log(rk_win(0, -1, theta))) / 3
    assert expected == pytest.approx((1.314827 + 0.239545 + 0.551445) / 3, abs=1e-5)  # 0.7019
    assert kway_ties_loss(rewards, ranks, tau=math.log(theta)).item() == pytest.approx(expected, abs=1e-6)
    # A ranking that ties everything counts (the K-way loss drops it): its one pair is a tie at difference 10.
    loss = kway_ties_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([[1, 1]]), tau=math.log(theta))
    assert loss.item() == pytest.approx(-math.log(rk_tie(5, -5, theta)), abs=1e-5)
    # Padding is ignored, and each ranking counts once: (one tie at difference 0) and (one win at difference 1).
    loss = kway_ties_loss(
        torch.tensor([[0.0, 0.0, 99.0], [1.0, 0.0, -99.0]]),
        torch.tensor([[1, 1, 0], [1, 2, 0]]),
        torch.tensor([[True, True, False], [True, True, False]]),
        tau=math.log(theta),
    )
    expected = (-math.log(rk_tie(0, 0, theta)) - math.log(rk_win(1, 0, theta))) / 2  # (log 3 + log(1 + 2/e)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_kway_ties_loss_without_ties_is_the_kway_loss_with_a_margin_and_reduces_to_it_as_tau_goes_to_0():
    torch.manual_seed(0)
    rewards, ranks = torch.randn(3, 4), torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1], [2, 1, 4, 3]])
    tau = 0.7
    ordered = [(i, j) for i in range(4) for j in range(4) if i != j]
    expected = (
        sum(
            sum(softplus(float(rewards[b, i] - rewards[b, j]) - tau) for i, j in ordered if ranks[b, i] < ranks[b, j])
            / 6
            for b in range(3)
        )
        / 3
    )
    assert kway_ties_loss(rewards, ranks, tau=tau).item() == pytest.approx(expected, abs=1e-5)
    near_zero = kway_ties_loss(rewards, ranks, tau=1e-6).item()
    assert near_zero == pytest.approx(kway_ranking_loss(rewards, ranks).item(), abs=1e-5)


def test_kway_ties_gradient_pulls_tied_rewards_together_and_pushes_wins_apart():
    rewards = torch.tensor([[2.0, 0.0, 1.0]], requires_grad=True)
    kway_ties_loss(rewards, torch.tensor([[1, 1, 3]]), tau=1.0).backward()  # 0 and 1 tie, both beat 2
    grad = rewards.grad[0]
    assert grad[0] > 0 > grad[1]  # descent lowers the higher of the tied pair and raises the lower
    assert grad[2] > 0  # and lowers the loser
