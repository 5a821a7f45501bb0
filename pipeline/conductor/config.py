"""The pipeline config (``configs/pipeline.yaml``): the stage list, each stage's YAML and overrides, the gold rubric.

The gold rubric is named here once (``rubric: module:function``) and the conductor passes it to every stage that
scores with it: the simulated labelers, the gold items mixed into labeling, the reward model's gold agreement, PPO's
gold score and the evaluation; the report says which rubric its gold figures come from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.conductor.stages import REGISTRY
from pipeline.lib import runs
from pipeline.lib.rubric import load_rubric

STAGES = tuple(stage.name for stage in REGISTRY)
ROUND_STAGES = STAGES[1:]  # what a round after the first repeats
OPTIONAL = tuple(stage.name for stage in REGISTRY if stage.optional)  # run only when `stages:` names them
UPSTREAM = {stage.name: stage.upstream for stage in REGISTRY}


@dataclass
class StageSettings:
    config: str | None = None  # the stage's own YAML (configs/<stage>.yaml)
    args: list[str] = field(default_factory=list)  # overrides, as on the stage's command line


@dataclass
class PipelineConfig:
    run: str = runs.DEFAULT_RUN
    runs_dir: str = "runs"
    rounds: int = 1
    prepare: list[str] = field(default_factory=list)  # modules run as `python -m MODULE` first (build data, ...)
    labeling: str = "human"  # human: people rank in the app; simulated: simulated labelers rank by the rubric
    rubric: str | None = None  # the gold rubric, module:function(prompt, response) -> float (higher = better)
    db: str | None = None  # labels database URL; default: the labeling stage's (runs/<run>/labeling/labels.db)
    gold_share: float = 0.0  # this share of the prompts become gold items, ranked by the rubric
    min_rankings: int | None = None  # human: rankings needed to go on (default: every regular item `overlap` times)
    # Which of a round's new items are labeled first: random, or active (the highest disagreement of the last round's
    # reward-model ensemble, `active_by`); labels_per_round: the rankings a round adds (default: every item).
    selection: str = "random"
    active_by: str = "disagreement"  # disagreement | uncertainty (reward.select)
    labels_per_round: int | None = None
    nproc: int = 1  # processes for the training stages (accelerate launch)
    zero: int = 0  # DeepSpeed ZeRO stage for the training stages: 0 (off), 2 or 3
    stages: dict[str, StageSettings] = field(default_factory=dict)

    def __post_init__(self):
        given = self.stages  # from YAML: {stage: {config, args}}; a stage left out gets its defaults
        unknown = set(given) - set(STAGES)
        if unknown:
            raise ValueError(f"stages: unknown {sorted(unknown)}; the stages are {', '.join(STAGES)}.")
        self.enabled = [name for name in STAGES if name not in OPTIONAL or name in given]
        self.stages = {
            name: s if isinstance(s := given.get(name) or {}, StageSettings) else StageSettings(**s) for name in STAGES
        }
        self._check_run_settings()
        self._check_stage_settings()
        self._check_selection()

    def _check_run_settings(self) -> None:
        if self.labeling not in ("simulated", "human"):
            raise ValueError(f"labeling must be 'simulated' or 'human', got {self.labeling!r}.")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}.")
        if self.zero not in (0, 2, 3):
            raise ValueError(f"zero must be 0, 2 or 3, got {self.zero}.")
        if not 0 <= self.gold_share < 1:
            raise ValueError(f"gold_share must be in [0, 1), got {self.gold_share}.")
        if self.rubric:
            load_rubric(self.rubric)  # a typo fails here, not an hour later in the labeling stage
        elif self.labeling == "simulated" or self.gold_share:
            needs = "simulated labelers" if self.labeling == "simulated" else "gold items (gold_share)"
            raise ValueError(f"{needs} rank by a gold rubric: set rubric: module:function, e.g. my_rubrics:score.")
        if not isinstance(self.prepare, list) or not all(isinstance(m, str) for m in self.prepare):
            raise ValueError(f"prepare must be a list of module names, got {self.prepare!r}.")

    def _check_stage_settings(self) -> None:
        """Each stage's config file exists and its extra args are command-line words (kept as strings)."""
        for name, settings in self.stages.items():
            if settings.config and not Path(settings.config).exists():
                raise ValueError(f"stages.{name}.config: {settings.config} does not exist.")
            if not all(isinstance(a, str | int | float) for a in settings.args):
                raise ValueError(f"stages.{name}.args must be a list of command-line words, got {settings.args!r}.")
            settings.args = [str(a) for a in settings.args]

    def _check_selection(self) -> None:
        """Active selection needs a previous round and an ensemble in it: said now, not after round 1 trained."""
        if self.selection not in ("random", "active"):
            raise ValueError(f"selection must be 'random' or 'active', got {self.selection!r}.")
        if self.active_by not in ("disagreement", "uncertainty"):
            raise ValueError(f"active_by must be 'disagreement' or 'uncertainty', got {self.active_by!r}.")
        if self.labels_per_round is not None and self.labels_per_round < 1:
            raise ValueError(f"labels_per_round must be at least 1 (rankings per round), got {self.labels_per_round}.")
        if self.labels_per_round is not None and self.min_rankings is not None:
            raise ValueError(
                "Set labels_per_round or min_rankings, not both: each says when a round's labeling is done."
            )
        if self.selection != "active":
            return
        if self.rounds < 2:
            raise ValueError(
                "selection: active picks round r+1's items by round r's reward-model ensemble, so it needs rounds: 2 "
                f"or more (round 1 is labeled in random order); rounds is {self.rounds}."
            )
        members = ensemble_size(self.stages["rm"])
        if members < 2:
            raise ValueError(
                f"selection: active ranks items by how much the reward models disagree, but the rm stage trains "
                f"{members} model (ensemble: {members}). Set `ensemble: 3` in "
                f"{self.stages['rm'].config or 'the rm config'}, or `args: [--ensemble, 3]` under stages.rm."
            )

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PipelineConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}.")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**raw)


def ensemble_size(settings: StageSettings) -> int:
    """The rm stage's ``ensemble``: its YAML's, unless its args override it (the last ``--ensemble N`` wins)."""
    size = 1
    if settings.config:
        size = int((yaml.safe_load(Path(settings.config).read_text()) or {}).get("ensemble", 1))
    args = settings.args
    for i, word in enumerate(args):
        if word == "--ensemble" and i + 1 < len(args):
            size = int(args[i + 1])
        elif word.startswith("--ensemble="):
            size = int(word.split("=", 1)[1])
    return size


def round_run(config: PipelineConfig, r: int) -> str:
    return config.run if r == 1 else f"{config.run}/round{r}"


def stage_dir(config: PipelineConfig, stage: str, r: int) -> Path:
    return runs.stage_dir(round_run(config, r), stage, config.runs_dir)
