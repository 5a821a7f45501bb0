"""How good a reward model is, on held-out pairs: pure numpy functions the RM stage (and its tests) call.

Held-out data is split by PROMPT: every pair of a prompt (its group_id) lands on the same side, so the eval accuracy
measures generalisation to new prompts, not recall of responses already seen in training under another pairing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def split_by_group(group_ids: Iterable[str], eval_fraction: float, seed: int = 0) -> tuple[set[str], set[str]]:
    """(train groups, eval groups): about ``eval_fraction`` of the distinct groups, at least one on each side.

    Groups are ordered by a hash of (seed, group id), so a group's side does not depend on row order, and adding
    prompts to the data leaves most existing ones where they were.
    """
    groups = sorted(set(group_ids))
    if len(groups) < 2:
        raise ValueError(
            f"Holding out prompts needs at least 2 distinct prompts (group_id), found {len(groups)}. Add data."
        )
    n_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    return set(order[n_eval:]), set(order[:n_eval])


def pairwise_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float:
    """Share of pairs the reward model orders like the label (equal rewards count as wrong, as in TRL)."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    return float(np.mean(r_chosen > r_rejected))


def accuracy_by_gap(
    r_chosen: Sequence[float], r_rejected: Sequence[float], rank_gaps: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Accuracy per rank gap, ``{"1": {"accuracy": ..., "pairs": n}, ...}``: wider gaps should be easier."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    gaps = np.asarray(rank_gaps)
    out = {}
    for gap in sorted(set(gaps.tolist())):
        sel = gaps == gap
        out[str(gap)] = {"accuracy": pairwise_accuracy(r_chosen[sel], r_rejected[sel]), "pairs": int(sel.sum())}
    return out


def calibration_bins(r_chosen: Sequence[float], r_rejected: Sequence[float], n_bins: int = 10) -> list[dict]:
    """The reliability diagram of ``p = sigmoid(r_chosen - r_rejected)``, the probability that the chosen one wins.

    Each pair predicts the side with p >= 0.5, with confidence max(p, 1 - p); pairs are binned by confidence into
    ``n_bins`` equal bins of [0, 1]. Per non-empty bin: mean confidence, accuracy and number of pairs.
    """
    diff = np.asarray(r_chosen, dtype=float) - np.asarray(r_rejected, dtype=float)
    p = 1.0 / (1.0 + np.exp(-diff))
    confidence = np.maximum(p, 1.0 - p)
    correct = p > 0.5
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [
        {
            "confidence": float(confidence[bins == b].mean()),
            "accuracy": float(correct[bins == b].mean()),
            "count": int((bins == b).sum()),
        }
        for b in np.unique(bins)
    ]


def expected_calibration_error(r_chosen: Sequence[float], r_rejected: Sequence[float], n_bins: int = 10) -> float:
    """ECE of the Bradley-Terry probability: the pair-weighted mean of |accuracy - mean confidence| over the bins of
    ``calibration_bins`` (Guo et al., 2017). 0 is perfectly calibrated.
    """
    bins = calibration_bins(r_chosen, r_rejected, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def reward_stats(scores: Sequence[float]) -> dict[str, float]:
    """Mean and (population) standard deviation: PPO normalises the RM's scores with these."""
    scores = np.asarray(scores, dtype=float)
    return {"mean": float(scores.mean()), "std": float(scores.std())}


def gold_agreement(
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
    gold_chosen: Sequence[float],
    gold_rejected: Sequence[float],
    tolerance: float = 1e-9,
) -> dict[str, Any]:
    """Share of pairs the reward model orders the same way as a gold score, skipping pairs the gold score ties.

    Returns ``{"agreement": share or None, "pairs": pairs compared, "gold_ties": pairs skipped}``.
    """
    r_diff = np.asarray(r_chosen, dtype=float) - np.asarray(r_rejected, dtype=float)
    g_diff = np.asarray(gold_chosen, dtype=float) - np.asarray(gold_rejected, dtype=float)
    decided = np.abs(g_diff) > tolerance
    agree = np.sign(r_diff[decided]) == np.sign(g_diff[decided])
    return {
        "agreement": float(agree.mean()) if decided.any() else None,
        "pairs": int(decided.sum()),
        "gold_ties": int((~decided).sum()),
    }
