"""What the PPO loop computes with: its models, its prompts, where the run is, its snapshots, and the ``Context`` that
carries them all to the phases of a step (as torchtune's recipe keeps its state on ``self``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pipeline.lib.stage import ModelArguments
from pipeline.lib.tracking import Tracker
from ppo.config import PPOStageConfig
from ppo.data import PromptOrder
from ppo.rewards import RewardModel
from ppo.rollout import VLLMGenerator
from ppo.shaping import AdaptiveKLController


@dataclass
class Models:
    """Everything the loop computes with; ``model`` is the trained policy + critic (prepared by accelerate)."""

    model: torch.nn.Module
    ref: torch.nn.Module | None  # None with LoRA: the policy with its adapter disabled
    reward_models: list[RewardModel]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kl: AdaptiveKLController
    generator: VLLMGenerator | None
    parameters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """Parameter counts and each reward model's normalisation, for summary.json."""
        normalisation = [{"path": str(m.path), "mean": m.mean, "std": m.std} for m in self.reward_models]
        return {**self.parameters, "reward_normalisation": normalisation}


@dataclass
class Prompts:
    """The training prompts in the order the steps take them, and the held-out ones the sample tables show."""

    train_rows: list[dict]
    train_ids: list[list[int]]
    eval_rows: list[dict]
    eval_ids: list[list[int]]
    dropped: int
    path: Path
    order: PromptOrder


@dataclass
class Progress:
    """Where the run is: its step, episodes and the history of every step since it began (across resumes)."""

    step: int = 0
    episode: int = 0
    history: list[dict] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    elapsed_before: float = 0.0  # training seconds before the last resume
    started: float = field(default_factory=time.perf_counter)
    settings: dict[str, Any] = field(default_factory=dict)  # what the run computes with: checked on resume

    def elapsed(self) -> float:
        """Training seconds since the run began, across resumes."""
        return self.elapsed_before + time.perf_counter() - self.started


@dataclass
class Snapshots:
    """The run's policy snapshots (``ppo.checkpoint``): their folder, the steps they are saved after, and those
    written so far (kept across a resume; the writing process's list)."""

    dir: Path
    steps: list[int]
    model_args: ModelArguments  # LoRA: the snapshot is saved and merged as the final policy is
    written: list[dict] = field(default_factory=list)


@dataclass
class Context:
    """What every phase of a step reads. ``num_steps`` is the run's length in PPO steps (``ppo.setup.total_steps``)."""

    config: PPOStageConfig
    accelerator: Accelerator
    tokenizer: Any
    models: Models
    prompts: Prompts
    rubric: Callable[[str, str], float] | None  # the gold rubric, when the config names one
    tracker: Tracker
    progress: Progress
    snapshots: Snapshots
    num_steps: int
