"""What PPO measures and shapes around TRL's rollout, without changing TRL's loop.

TRL 1.12's ``PPOTrainer.train`` is one long loop with no hooks inside a step. Two thin wrappers give us what it lacks:
- ``instrument_generation`` wraps the policy's ``generate``: generation time, response lengths, EOS rate, and the
  gold rubric's score of each rollout (when a rubric is set);
- ``ShapedRewardModel`` is the reward model as PPO sees it: scoring time, scores normalised with the reward model's
  training statistics, minus an optional per-token length penalty.
``PPOStepCallback`` turns these into per-step metrics, and updates the adaptive KL coefficient, which TRL reads from
``args.kl_coef`` at every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from ppo.shaping import AdaptiveKLController, first_true, length_penalty, normalise_scores, response_lengths


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


@dataclass
class RolloutStats:
    """Accumulates over one PPO step; read and reset by PPOStepCallback."""

    paused: bool = False
    context_length: int = 0
    generation_s: float = 0.0
    scoring_s: float = 0.0
    lengths: list[int] = field(default_factory=list)
    eos: list[bool] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    raw_scores: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.generation_s = self.scoring_s = 0.0
        self.lengths, self.eos, self.gold, self.raw_scores = [], [], [], []


def instrument_generation(policy: torch.nn.Module, stats: RolloutStats, tokenizer,
                          rubric: Callable[[str, str], float] | None = None) -> None:  # fmt: skip
    """Wrap ``policy.generate`` (an instance attribute, so TRL's calls go through it)."""
    inner = policy.generate

    def generate(*args, **kwargs):
        start = _now()
        output = inner(*args, **kwargs)
        if stats.paused:
            return output
        stats.generation_s += _now() - start
        queries = kwargs["input_ids"]
        stats.context_length = queries.shape[1]
        sequences = output.sequences if hasattr(output, "sequences") else output
        responses = sequences[:, queries.shape[1] :]
        lengths = response_lengths(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        stats.lengths += lengths.tolist()
        stats.eos += (responses == tokenizer.eos_token_id).any(dim=1).tolist()
        if rubric is not None:
            prompts = tokenizer.batch_decode(queries, skip_special_tokens=True)
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            stats.gold += [rubric(p, r) for p, r in zip(prompts, texts, strict=True)]
        return output

    policy.generate = generate


class _Backbone(torch.nn.Module):
    """The reward model's transformer, timed, remembering each sequence's response length for the penalty."""

    def __init__(self, backbone: torch.nn.Module, stats: RolloutStats):
        super().__init__()
        self.inner = backbone
        self.stats = stats
        self.response_lengths: torch.Tensor | None = None

    def forward(self, input_ids, attention_mask, **kwargs):
        start = _now()
        # TRL left-pads every query to the rollout's context length, so the response is what follows it; it reads
        # the reward at the token before the response's first pad (attention_mask is input_ids != pad).
        self.response_lengths = first_true(attention_mask[:, self.stats.context_length :] == 0)
        output = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if not self.stats.paused:
            self.stats.scoring_s += _now() - start
        return output


class ShapedRewardModel(torch.nn.Module):
    """Looks to TRL's ``get_reward`` like a sequence-classification model (``base_model_prefix`` + ``score``)."""

    base_model_prefix = "backbone"

    def __init__(self, reward_model: torch.nn.Module, mean: float, std: float, length_penalty_coef: float,
                 stats: RolloutStats):  # fmt: skip
        super().__init__()
        self.backbone = _Backbone(getattr(reward_model, reward_model.base_model_prefix), stats)
        self.head = reward_model.score
        self.config = reward_model.config
        self.mean, self.std, self.length_penalty_coef = mean, std, length_penalty_coef
        self.stats = stats

    def score(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raw = self.head(hidden_states)
        if not self.stats.paused:
            # Remember the raw values at the position TRL reads the score from, for logging.
            last = self.stats.context_length + self.backbone.response_lengths - 1
            picked = raw[torch.arange(raw.shape[0], device=raw.device), last.to(raw.device), 0]
            self.stats.raw_scores += picked.detach().float().tolist()
        shaped = normalise_scores(raw, self.mean, self.std)
        if self.length_penalty_coef:
            penalty = length_penalty(self.backbone.response_lengths, self.length_penalty_coef)
            shaped = shaped - penalty.to(shaped.dtype)[:, None, None]
        return shaped


class PPOStepCallback(TrainerCallback):
    """Per-step timings, rollout statistics and the KL coefficient, added to TRL's logs; the adaptive KL update."""

    def __init__(self, stats: RolloutStats, kl: AdaptiveKLController | None):
        self.stats = stats
        self.kl = kl
        self.step_start = _now()
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.step_start = _now()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "objective/kl" not in logs:
            return
        step_s = _now() - self.step_start
        s = self.stats
        extra = {
            "timing/step_s": step_s,
            "timing/generation_s": s.generation_s,
            "timing/scoring_s": s.scoring_s,
            # Everything else in the step: reference and value forwards, advantages, the PPO epochs.
            "timing/optimisation_s": max(step_s - s.generation_s - s.scoring_s, 0.0),
            "rollout/response_length": sum(s.lengths) / max(len(s.lengths), 1),
            "rollout/eos_rate": sum(s.eos) / max(len(s.eos), 1),
            "rollout/raw_score": sum(s.raw_scores) / max(len(s.raw_scores), 1),
            "objective/kl_coef": args.kl_coef,
        }
        if s.gold:
            extra["rollout/gold_score"] = sum(s.gold) / len(s.gold)
        logs.update(extra)  # the same dict the reporting callbacks log next
        self.history.append(
            {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, float | int)}}
        )
        if self.kl is not None:
            args.kl_coef = self.kl.update(logs["objective/kl"], n_steps=args.batch_size)
        s.reset()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_start = _now()
