"""The PPO math of ppo/algorithm.py against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ppo.algorithm import (
    aggregate_scores,
    gae,
    gathered_logprobs,
    gumbel_noise,
    kl_per_token,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
    whitening_sums,
)


def test_gae_by_hand():
    # gamma 1, lambda 0.5, V = 0.5 everywhere, a score of 1 at the last token:
    # t=2: delta = 1 + 0 - 0.5 = 0.5, A = 0.5; t=1: delta = 0 + 0.5 - 0.5 = 0, A = 0.5 * 0.5 = 0.25;
    # t=0: delta = 0, A = 0.5 * 0.25 = 0.125. Returns = A + V.
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.125, 0.25, 0.5])
    assert returns[0].tolist() == pytest.approx([0.625, 0.75, 1.0])


def test_gae_ignores_the_padding_after_a_response():
    # The response ends at t=1; the value 9 on the padding must not leak in: after the last token V is 0.
    # t=1: delta = 1 + 0 - 0.5 = 0.5, A = 0.5; t=0: delta = 0 + 0.5 - 0.5 = 0, A = 0.5 * 0.5 = 0.25.
    rewards, values, mask = (
        torch.tensor([[0.0, 1.0, 0.0]]),
        torch.tensor([[0.5, 0.5, 9.0]]),
        torch.tensor([[1.0, 1, 0]]),
    )
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.25, 0.5, 0.0])
    assert returns[0].tolist() == pytest.approx([0.75, 1.0, 0.0])


def test_gae_discounts_with_gamma():
    # gamma 0.5, lambda 1: A_1 = 1 - 0 = 1; A_0 = 0 + 0.5 * 0 - 0 + 0.5 * 1 * 1 = 0.5 (all values 0).
    advantages, _ = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([0.5, 1.0])


def test_whiten_uses_the_masked_entries_only():
    # 1, 2, 3 (the 4 is padding): mean 2, unbiased variance (1 + 0 + 1) / 2 = 1.
    values, mask = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    # shift_mean=False adds the mean back: -1 + 2, 0 + 2, 1 + 2.
    assert whiten(values, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_whiten_with_statistics_summed_over_processes_equals_whitening_the_whole():
    values, mask = torch.tensor([[1.0, 5.0], [2.0, 7.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    halves = [whitening_sums(values[i : i + 1], mask[i : i + 1]) for i in range(2)]
    total = tuple(a + b for a, b in zip(*halves, strict=True))
    assert total == (3.0, 8.0, 30.0)  # count 3, sum 1 + 5 + 2, squares 1 + 25 + 4
    whole = whiten(values, mask)
    parts = torch.cat([whiten(values[i : i + 1], mask[i : i + 1], total) for i in range(2)])
    assert torch.allclose(whole, parts)


def test_kl_estimators():
    logprobs, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_per_token(logprobs, ref, "k1").item() == pytest.approx(1.0)  # -1 - (-2)
    # k3: log r = ref - logp = -1; (e^-1 - 1) - (-1) = e^-1
    assert kl_per_token(logprobs, ref, "k3").item() == pytest.approx(math.exp(-1))
    with pytest.raises(ValueError, match="k1"):
        kl_per_token(logprobs, ref, "k2")


def test_token_rewards_put_the_score_on_the_last_token():
    kl, mask = torch.tensor([[0.5, 1.0, 0.7]]), torch.tensor([[1.0, 1.0, 0.0]])
    rewards, non_score = token_rewards(kl, torch.tensor([2.0]), torch.tensor([1]), kl_coef=0.1, mask=mask)
    assert non_score[0].tolist() == pytest.approx([-0.05, -0.1, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.05, 1.9, 0.0])  # -0.1 + 2 at the last token


def test_policy_loss_clips_both_ways():
    # ratios 2, 1, 0.5 with advantages 1, 1, -1 and eps 0.2:
    # token 0: max(-2, -1.2) = -1.2 (clipped); token 1: -1; token 2: max(0.5, 0.8) = 0.8 (clipped). Sum -1.4.
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    new = old + torch.tensor([[math.log(2.0), 0.0, math.log(0.5)]])
    loss, stats = policy_loss(new, old, torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3), cliprange=0.2)
    assert loss.item() == pytest.approx(-1.4)
    assert stats["clipfrac"].item() == 2
    assert stats["ratio"].item() == pytest.approx(3.5)
    assert stats["approxkl"].item() == pytest.approx(math.log(2.0) ** 2)  # 0.5 * (ln2^2 + 0 + ln0.5^2)


def test_policy_loss_gradient_stops_where_clipped():
    old = torch.zeros(1, 2)
    new = torch.tensor([[math.log(2.0), 0.0]], requires_grad=True)
    loss, _ = policy_loss(new, old, torch.ones(1, 2), torch.ones(1, 2), cliprange=0.2)
    loss.backward()
    # Clipped at 1.2 for token 0: no gradient; token 1: d(-A * e^x)/dx at x=0 = -1.
    assert new.grad[0].tolist() == pytest.approx([0.0, -1.0])


def test_value_loss_by_hand():
    # V = 1, 0 from V_old = 0.5, 0.5 with eps 0.2: clipped values 0.7 and 0.3.
    # token 0 (return 2): max((1-2)^2, (0.7-2)^2) = 1.69; token 1 (return 0): max(0, 0.09) = 0.09. 0.5 * 1.78.
    loss, clipped = value_loss(
        torch.tensor([[1.0, 0.0]]),
        torch.full((1, 2), 0.5),
        torch.tensor([[2.0, 0.0]]),
        torch.ones(1, 2),
        cliprange_value=0.2,
    )
    assert loss.item() == pytest.approx(0.89)
    assert clipped.item() == 2
    # V = 0 from 0.5, return 2: clipped 0.3 gives 2.89, unclipped 4 is larger: 0.5 * 4, not counted as clipped.
    loss, clipped = value_loss(
        torch.zeros(1, 1), torch.full((1, 1), 0.5), torch.full((1, 1), 2.0), torch.ones(1, 1), cliprange_value=0.2
    )
    assert loss.item() == pytest.approx(2.0) and clipped.item() == 0


def test_gathered_logprobs_equal_log_softmax():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    tokens = torch.tensor([[2, 0]])
    # log softmax of [1, 2, 3] at 3: 3 - log(e + e^2 + e^3); uniform over 3: -log 3
    expected = [3 - math.log(math.e + math.e**2 + math.e**3), -math.log(3)]
    assert gathered_logprobs(logits, tokens)[0].tolist() == pytest.approx(expected)


def test_aggregate_scores():
    scores = torch.tensor([[1.0, 3.0], [3.0, 5.0]])  # 2 reward models x 2 responses
    assert aggregate_scores(scores, "mean").tolist() == [2.0, 4.0]
    assert aggregate_scores(scores, "min").tolist() == [1.0, 3.0]
    # std over the two models (unbiased): sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt(2), the same for both responses.
    assert aggregate_scores(scores, "mean_minus_std", k=1.0).tolist() == pytest.approx([2 - 2**0.5, 4 - 2**0.5])
    with pytest.raises(ValueError, match="at least 2"):
        aggregate_scores(scores[:1], "mean_minus_std")
    with pytest.raises(ValueError, match="one of"):
        aggregate_scores(scores, "median")


def test_gumbel_sampling_follows_the_distribution_and_depends_only_on_the_seed():
    log_probs = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    seeds = torch.arange(6000)
    picks = (log_probs + gumbel_noise(seeds, step=3, vocab=3)).argmax(dim=1)
    frequencies = torch.bincount(picks, minlength=3).float() / len(seeds)
    assert frequencies.tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.03)
    # Row 9's noise is the same alone or in a batch; another step gives other noise.
    assert torch.equal(gumbel_noise(torch.tensor([5, 9]), 3, 10)[1], gumbel_noise(torch.tensor([9]), 3, 10)[0])
    assert not torch.equal(gumbel_noise(torch.tensor([9]), 3, 10), gumbel_noise(torch.tensor([9]), 4, 10))
