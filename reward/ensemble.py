"""Reward-model ensembles: members that differ in seed and in a bootstrap sample of the training prompts.

``ensemble: N`` in ``configs/rm.yaml`` trains N members one after another into ``runs/<run>/rm/members/<i>/``
(``model/``, ``reward_stats.json``, ``checkpoints/``, and ``member.json`` once the member is saved), and writes
``runs/<run>/rm/ensemble.json`` listing them; PPO and the evaluation read every member from there
(``pipeline.lib.runs.reward_models``). The ensemble's score is the members' mean; its disagreement on a pair is the
standard deviation across members of the margin ``r_chosen - r_rejected``: is it higher where the ensemble is
wrong? (Gao et al., 2022; Coste et al., 2023.)

``train_members`` trains the members and ``score_members`` scores them; the numpy functions above them are their
math.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.state import AcceleratorState
from datasets import Dataset

from pipeline.lib import runs
from pipeline.lib.runs import ENSEMBLE
from pipeline.lib.scoring import score_sequences
from pipeline.lib.stage import ModelArguments, RunArguments, Stage, latest_checkpoint, trainer_figures
from reward.config import RMStageConfig
from reward.evaluate import figures_from_scores, scored_sequences
from reward.trainer import fit
from reward.training_data import RMData

__all__ = [
    "bootstrap_counts",
    "disagreement",
    "mean_scores",
    "member_dir",
    "score_members",
    "train_members",
]


def member_dir(stage_dir: Path, i: int) -> Path:
    return stage_dir / "members" / str(i)


def bootstrap_counts(groups: Sequence[str], seed: int) -> Counter:
    """How often each training prompt is drawn into a bootstrap sample: as many draws as there are distinct
    prompts, with replacement, seeded (about 63% of the prompts are drawn at least once)."""
    distinct = sorted(set(groups))
    rng = random.Random(seed)
    return Counter(rng.choice(distinct) for _ in distinct)


def mean_scores(member_scores: Sequence[dict]) -> dict:
    """The ensemble's score of each sequence: the mean of its members' scores."""
    return {key: float(np.mean([scores[key] for scores in member_scores])) for key in member_scores[0]}


def disagreement(margins: np.ndarray) -> dict[str, float | None]:
    """``margins[M, P]``: each member's ``r_chosen - r_rejected`` on P held-out pairs. The std across members per
    pair (ddof 0), its mean, and its mean on the pairs the ensemble's mean orders right and wrong."""
    std = margins.std(axis=0)
    right = margins.mean(axis=0) > 0
    return {
        "eval_disagreement": float(std.mean()),
        "eval_disagreement_right": float(std[right].mean()) if right.any() else None,
        "eval_disagreement_wrong": float(std[~right].mean()) if (~right).any() else None,
    }


def train_members(
    stage: Stage, run: RunArguments, config: RMStageConfig, model_args: ModelArguments, model_path, tokenizer, data
) -> list[dict[str, Any]]:
    """Every member of the ensemble, one after another: seed ``seed + i``, a bootstrap sample of the training
    prompts, its own folder. Resuming keeps the members saved already and continues the one a kill cut short."""
    state, members = PartialState(), []
    for i in range(config.ensemble):
        out = member_dir(stage.dir, i)
        if run.resume and (out / "member.json").is_file():
            members.append(json.loads((out / "member.json").read_text()))
            continue
        checkpoint = None
        if run.resume and any((out / "checkpoints").glob("checkpoint-*")):
            checkpoint = latest_checkpoint(out / "checkpoints")
        elif state.is_main_process:
            shutil.rmtree(out, ignore_errors=True)
        state.wait_for_everyone()
        member = copy.copy(config)
        member.seed, member.output_dir = config.seed + i, str(out / "checkpoints")
        if i:  # the tracker's steps would run backwards: member 0's curves stand for the rest
            member.report_to = []  # type: ignore[assignment]  # TrainingArguments made it a list while parsing
            # accelerate keeps one AcceleratorState per process, holding the first Trainer's DeepSpeed plugin, and
            # refuses a second Accelerator with a plugin of its own: each member's Trainer starts from a fresh one
            # (the process group, in PartialState, stays).
            AcceleratorState._reset_state()
        drawn = bootstrap_counts(data.train_groups, member.seed)
        rows = [
            row for row, group in zip(data.train_rows, data.train_groups, strict=True) for _ in range(drawn[group])
        ]
        print(
            f"[rm] ensemble member {i + 1}/{config.ensemble}: seed {member.seed}, {len(drawn)} of "
            f"{len(set(data.train_groups))} training prompts drawn, {len(rows)} examples"
        )
        trainer, result = fit(
            stage, member, model_args, model_path, tokenizer, data, out, checkpoint, Dataset.from_list(rows)
        )
        resumed_at = [int(checkpoint.name.split("-")[-1])] if checkpoint else []
        figures = {"member": i, "seed": member.seed, "prompts_drawn": len(drawn), "train_examples": len(rows)}
        figures |= trainer_figures(trainer, result, resumed_at)
        if state.is_main_process:
            runs.write_json(out / "member.json", figures)
        members.append(figures)
    return members


def score_members(stage: Stage, members: list[dict], data: RMData, config: RMStageConfig, rubric) -> dict[str, Any]:
    """Each member's held-out figures and reward_stats.json; the ensemble's (its mean score) in the stage folder;
    the members' disagreement on the held-out pairs; and ensemble.json, which PPO and the evaluation read."""
    dirs = [member_dir(stage.dir, m["member"]) for m in members]
    sequences = scored_sequences(data)
    scores = [score_sequences(d / "model", sequences, config.per_device_eval_batch_size) for d in dirs]
    keep = ("eval_accuracy", "eval_gold_accuracy", "eval_ece", "eval_reward_margin", "reward_mean", "reward_std")
    for member, d, member_scores in zip(members, dirs, scores, strict=True):
        figures = figures_from_scores(stage, d, member_scores, data, rubric)
        member |= {key: figures[key] for key in keep}
    margins = np.array(
        [[s[tuple(p["chosen_ids"])] - s[tuple(p["rejected_ids"])] for p in data.eval_pairs] for s in scores]
    )
    metrics = figures_from_scores(stage, stage.dir, mean_scores(scores), data, rubric)
    members_file = {"members": [str(d.relative_to(stage.dir) / "model") for d in dirs], "score": "mean"}
    runs.write_json(stage.dir / ENSEMBLE, members_file)
    train_loss = float(np.mean([m["train_loss"] for m in members]))
    return {
        **metrics,
        **disagreement(margins),
        "train_loss": train_loss,
        "ensemble": len(members),
        "members": members,
    }
