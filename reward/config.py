"""The reward-model stage's settings: TRL's ``RewardConfig`` and the stage's own (the loss, the held-out share, the
ensemble, the gold rubric), checked together in ``__post_init__``. ``make rm`` reads them from configs/rm.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig

from pipeline.lib.stage import TrainerDefaults

LOSSES = ("pairwise", "kway", "kway_ties")


@dataclass
class RMStageConfig(TrainerDefaults, RewardConfig):  # type: ignore[misc]  # the overridden field types, see TrainerDefaults
    """Everything ``RewardConfig`` (and so ``TrainingArguments``) takes, plus the stage's own settings below. The run
    and the start model (default: the run's SFT policy) are ``pipeline.lib.stage.RunArguments`` and
    ``ModelArguments``; with LoRA the score head is trained in full and the saved model is always merged."""

    preferences: str | None = field(
        default=None,
        metadata={
            "help": "Default: the run's export. Or an export folder, a jsonl/json/csv/parquet file, a datasets folder."
        },
    )
    loss: str = field(
        default="pairwise",
        metadata={
            "help": "pairwise (Bradley-Terry on pairs), kway (rankings; ties dropped) or kway_ties (rankings; ties "
            "modelled, Rao-Kupper)."
        },
    )
    tie_threshold: float = field(
        default=1.0,
        metadata={"help": "kway_ties: the reward gap log(theta) within which two replies are likely a tie (> 0)."},
    )
    margin_from_rank_gap: bool = field(
        default=False, metadata={"help": "Pairs ranked n places apart must be scored at least n - 1 apart."}
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the prompts held out for evaluation."})
    ensemble: int = field(
        default=1,
        metadata={
            "help": "Members of a reward-model ensemble, each with its own seed and bootstrap sample of the training "
            "prompts (1: one model, on all of them)."
        },
    )
    rubric: str | None = field(
        default=None,
        metadata={"help": "Gold rubric module:function: the held-out pairs' agreement with it (eval_gold_accuracy)."},
    )
    # The K-way collator pads to pad_to_multiple_of as TRL's pair collator does.

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}.")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}.")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be at least 1 (members), got {self.ensemble}.")
        if self.loss == "kway_ties" and not self.tie_threshold > 0:
            raise ValueError(
                f"tie_threshold must be > 0 for loss kway_ties (at 0 no tie is possible), got {self.tie_threshold}."
            )
