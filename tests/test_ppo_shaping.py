"""Reward shaping and the adaptive KL controller against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from ppo.shaping import AdaptiveKLController, length_penalty, normalise_scores, response_lengths


def test_normalise_scores():
    # (3 - 1) / 2 = 1, (0 - 1) / 2 = -0.5
    assert torch.allclose(normalise_scores(torch.tensor([3.0, 0.0]), mean=1.0, std=2.0), torch.tensor([1.0, -0.5]))


def test_normalise_guards_a_zero_std():
    assert torch.isfinite(normalise_scores(torch.tensor([1.0]), mean=0.0, std=0.0)).all()


def test_length_penalty():
    # 0.01 per token: 10 tokens cost 0.1, 0 tokens cost nothing
    assert torch.allclose(length_penalty(torch.tensor([10, 0]), 0.01), torch.tensor([0.1, 0.0]))


def test_response_lengths_stop_at_the_first_eos():
    eos, pad = 1, 0
    responses = torch.tensor(
        [
            [5, 6, 1, 7, 1],  # EOS at index 2: 3 tokens including it
            [5, 6, 7, 0, 0],  # no EOS: the 3 non-pad tokens
            [1, 0, 0, 0, 0],  # EOS first: 1 token
            [5, 0, 6, 7, 8],  # a generated pad token ends the response, as TRL reads it: 1 token
            [5, 6, 7, 8, 9],  # neither: the full width
        ]
    )
    assert response_lengths(responses, eos, pad).tolist() == [3, 3, 1, 1, 5]


def test_adaptive_kl_controller_follows_ziegler():
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    # kl 9 -> error 9/6 - 1 = 0.5, clipped to 0.2; mult = 1 + 0.2 * 100 / 10000 = 1.002
    assert ctl.update(kl=9.0, n_steps=100) == pytest.approx(0.1002)
    # kl 3 -> error -0.5, clipped to -0.2; mult = 1 - 0.2 * 1 / 10000 = 0.99998
    assert ctl.update(kl=3.0, n_steps=1) == pytest.approx(0.1002 * 0.99998)
    # kl 6.6 -> error 0.1 (inside the clip); mult = 1 + 0.1 * 1000 / 10000 = 1.01
    ctl = AdaptiveKLController(value=1.0, target=6.0, horizon=10000)
    assert ctl.update(kl=6.6, n_steps=1000) == pytest.approx(1.01)
