"""Reward-model ensembles: members that differ in seed and in a bootstrap sample of the training prompts.

``ensemble: N`` in ``configs/rm.yaml`` trains N members one after another into ``runs/<run>/rm/members/<i>/``
(``model/``, ``reward_stats.json``, ``checkpoints/``, and ``member.json`` once the member is saved), and writes
``runs/<run>/rm/ensemble.json`` listing them; PPO and the evaluation read every member from there
(``pipeline.lib.runs.reward_models``). The ensemble's score is the members' mean; its disagreement on a pair is the
standard deviation across members of the margin ``r_chosen - r_rejected``: is it higher where the ensemble is
wrong? (Gao et al., 2022; Coste et al., 2023.)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["bootstrap_counts", "disagreement", "mean_scores", "member_dir"]


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
