"""How good a reward model is, on held-out pairs: pure numpy metrics (accuracy, by rank gap, calibration, agreement
with a gold rubric), and the stage's figures from the saved model's scores (``score_saved_model``): summary.json's
held-out figures, ``reward_stats.json`` and the reward histogram.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.lib import runs
from pipeline.lib.prompts import user_message
from pipeline.lib.scoring import score_sequences
from pipeline.lib.stage import Stage
from reward.config import RMStageConfig
from reward.training_data import RMData


def pairwise_accuracy(r_chosen: ArrayLike, r_rejected: ArrayLike) -> float:
    """Share of pairs the reward model orders like the label (equal rewards count as wrong, as in TRL)."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    return float(np.mean(r_chosen > r_rejected))


def accuracy_by_gap(r_chosen: ArrayLike, r_rejected: ArrayLike, rank_gaps: ArrayLike) -> dict[str, dict[str, float]]:
    """Accuracy per rank gap, ``{"1": {"accuracy": ..., "pairs": n}, ...}``: wider gaps should be easier."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    gaps = np.asarray(rank_gaps)
    out = {}
    for gap in sorted(set(gaps.tolist())):
        sel = gaps == gap
        out[str(gap)] = {"accuracy": pairwise_accuracy(r_chosen[sel], r_rejected[sel]), "pairs": int(sel.sum())}
    return out


def calibration_bins(r_chosen: ArrayLike, r_rejected: ArrayLike, n_bins: int = 10) -> list[dict]:
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


def expected_calibration_error(r_chosen: ArrayLike, r_rejected: ArrayLike, n_bins: int = 10) -> float:
    """ECE of the Bradley-Terry probability: the pair-weighted mean of |accuracy - mean confidence| over the bins of
    ``calibration_bins`` (Guo et al., 2017). 0 is perfectly calibrated.
    """
    bins = calibration_bins(r_chosen, r_rejected, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def reward_stats(scores: ArrayLike) -> dict[str, float]:
    """Mean and (population) standard deviation: PPO normalises the RM's scores with these."""
    scores = np.asarray(scores, dtype=float)
    return {"mean": float(scores.mean()), "std": float(scores.std())}


def gold_agreement(
    r_chosen: ArrayLike,
    r_rejected: ArrayLike,
    gold_chosen: ArrayLike,
    gold_rejected: ArrayLike,
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


def evaluate_pairs(
    pairs: list[dict[str, Any]], scores: dict, rubric: Callable[[str, str], float] | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The held-out figures for summary.json, and the chosen and rejected rewards; with a gold ``rubric``, how often
    the reward model and the labels order a pair as the rubric does."""
    r_chosen = np.array([scores[tuple(p["chosen_ids"])] for p in pairs])
    r_rejected = np.array([scores[tuple(p["rejected_ids"])] for p in pairs])
    metrics = {
        "eval_pairs": len(pairs),
        "eval_accuracy": pairwise_accuracy(r_chosen, r_rejected),
        "eval_ece": expected_calibration_error(r_chosen, r_rejected),
        "calibration": calibration_bins(r_chosen, r_rejected),
        "eval_reward_margin": float(np.mean(r_chosen - r_rejected)),
        "eval_reward_chosen_mean": float(r_chosen.mean()),
        "eval_reward_rejected_mean": float(r_rejected.mean()),
        "accuracy_by_gap": None,
        "eval_gold_accuracy": None,
    }
    if all(p["rank_gap"] is not None for p in pairs):
        metrics["accuracy_by_gap"] = accuracy_by_gap(r_chosen, r_rejected, [p["rank_gap"] for p in pairs])
    if rubric is not None:

        def score(pair, key):
            return rubric(user_message(pair["prompt"]), " ".join(m["content"] for m in pair[key]))

        gold_chosen = [score(p, "chosen") for p in pairs]
        gold_rejected = [score(p, "rejected") for p in pairs]
        agreement = gold_agreement(r_chosen, r_rejected, gold_chosen, gold_rejected)
        # The labels' own agreement with the rubric: the ceiling a reward model copying the labels would reach.
        labels = gold_agreement(np.ones(len(pairs)), np.zeros(len(pairs)), gold_chosen, gold_rejected)
        metrics |= {
            "eval_gold_accuracy": agreement["agreement"],
            "eval_gold_pairs": agreement["pairs"],
            "eval_gold_ties": agreement["gold_ties"],
            "eval_label_gold_agreement": labels["agreement"],
        }
    return metrics, r_chosen, r_rejected


def plot_rewards(path: Path, r_chosen: np.ndarray, r_rejected: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.histogram_bin_edges(np.concatenate([r_chosen, r_rejected]), bins=30)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(r_chosen, bins.tolist(), alpha=0.6, label="chosen")
    ax.hist(r_rejected, bins.tolist(), alpha=0.6, label="rejected")
    ax.set(xlabel="reward", ylabel="held-out pairs", title="Reward of chosen vs rejected responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_saved_model(stage: Stage, model_dir: Path, data: RMData, config: RMStageConfig, rubric) -> dict[str, Any]:
    """The held-out figures and reward_stats.json, from the saved model loaded as PPO will load it."""
    scores = score_sequences(model_dir, scored_sequences(data), config.per_device_eval_batch_size)
    return figures_from_scores(stage, stage.dir, scores, data, rubric)


def scored_sequences(data: RMData) -> list[list[int]]:
    """The held-out pairs' sequences and every training response: what the saved model scores."""
    return [ids for p in data.eval_pairs for ids in (p["chosen_ids"], p["rejected_ids"])] + data.train_sequences


def figures_from_scores(stage: Stage, out_dir: Path, scores: dict, data: RMData, rubric) -> dict[str, Any]:
    """``out_dir``'s reward_stats.json and reward histogram, and the held-out figures, from scores of
    ``scored_sequences``."""
    stats = reward_stats([scores[s] for s in {tuple(ids) for ids in data.train_sequences}])
    runs.write_json(out_dir / "reward_stats.json", stats)
    eval_metrics, r_chosen, r_rejected = evaluate_pairs(data.eval_pairs, scores, rubric)
    plot_rewards(out_dir / "reward_histogram.png", r_chosen, r_rejected)
    if out_dir == stage.dir:
        rows = [[float(r), "chosen"] for r in r_chosen] + [[float(r), "rejected"] for r in r_rejected]
        stage.tracker.log_table("eval/reward_histogram", ["reward", "response"], rows)
    return {**eval_metrics, "reward_mean": stats["mean"], "reward_std": stats["std"]}
