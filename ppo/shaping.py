"""Reward shaping and the KL coefficient: small pure functions, checked by hand in tests/test_ppo_shaping.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def normalise_scores(scores: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Reward-model scores in units of the training set's spread, so kl_coef means the same for every reward model."""
    return (scores - mean) / max(std, 1e-6)


def length_penalty(lengths: torch.Tensor, coef: float) -> torch.Tensor:
    """What is subtracted from the score of a response of ``lengths`` tokens: ``coef`` per token."""
    return coef * lengths.to(torch.float32)


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the first True; the row's width when there is none."""
    width = torch.full_like(mask[:, 0], mask.shape[1], dtype=torch.long)
    return torch.where(mask.any(dim=1), mask.int().argmax(dim=1), width)


def response_lengths(responses: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Tokens in each response as TRL scores it: up to and including the first EOS, and before the first pad token.

    A response is truncated after its first EOS and padded; a pad token the policy generated itself therefore ends the
    response too. Where the pad token is the EOS token, the first one is the response's EOS.
    """
    ends = first_true(responses == eos_token_id) + 1
    if eos_token_id == pad_token_id:
        return ends.clamp(max=responses.shape[1])
    return torch.minimum(ends, first_true(responses == pad_token_id))


@dataclass
class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences".

    After each step with measured KL ``kl``, the coefficient is multiplied by
    ``1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``: it grows while the policy drifts further from the
    reference than the target, and shrinks while it stays closer.
    """

    value: float
    target: float
    horizon: float
    adaptive: bool = True  # False: a fixed coefficient, update() leaves it as it is

    def update(self, kl: float, n_steps: int = 1) -> float:
        if self.adaptive:
            proportional_error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]
