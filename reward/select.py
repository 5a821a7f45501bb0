"""Active selection: which of a round's new candidates people should rank first (``python -m reward.select``).

Round r+1 of the pipeline (``selection: active``) scores each new item's replies with every member of round r's
reward-model ensemble and gives the item a priority; the labeling app hands out the highest priority first among
items with as many rankings, so a label budget (``labels_per_round``) goes where the reward models know least.

- ``disagreement`` (the default): for each pair of replies, the standard deviation across members of the margin
  ``r_i - r_j``, averaged over the item's pairs. The members' offsets cancel in a margin, so a member that scores
  everything higher adds nothing (the held-out disagreement of ``make rm``, on unlabeled items).
- ``uncertainty``: how close the ensemble's mean preference probability ``sigmoid(r_i - r_j)`` is to 0.5, as
  ``1 - |2p - 1|`` averaged over the pairs: the pairs the models cannot call, even if they agree on that.
- ``random``: a hash of (seed, prompt id) in [0, 1): the same budget without the models, the baseline to beat.

The item's ``priority`` is ``round - 1`` plus its quantile under the measure, in [0, 1): within a round the measure
orders the items, and a later round's items come before the leftovers of an earlier one, whatever the scale of the
measure. Writes ``runs/<run>/selection/candidates.jsonl`` (the rows with ``priority`` and the raw measure
``selection_score``, in the input's order: the import reads it) and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.lib import runs
from pipeline.lib.errors import DataError, exit_with
from pipeline.lib.prompts import prompt_messages
from pipeline.lib.stage import Stage, parse_configs
from pipeline.lib.tables import read_table, write_jsonl

BY = ("disagreement", "uncertainty", "random")
CANDIDATES = "candidates.jsonl"


@dataclass
class SelectionConfig:
    run: str = field(default=runs.DEFAULT_RUN, metadata={"help": "Outputs go to <runs_dir>/<run>/selection/."})
    runs_dir: str = field(default="runs", metadata={"help": "Root folder of all runs."})
    candidates: str | None = field(
        default=None, metadata={"help": "The candidates to prioritise; default: the run's candidates.jsonl."}
    )
    reward_models: str | None = field(
        default=None,
        metadata={"help": "A reward-model folder with an ensemble.json (the last round's rm/); default: the run's."},
    )
    by: str = field(default="disagreement", metadata={"help": f"How to prioritise: {', '.join(BY)}."})
    seed: int = field(default=0, metadata={"help": "For `by: random`: which order the hash gives."})
    round: int = field(default=1, metadata={"help": "The pipeline round the candidates are for (priority offset)."})
    batch_size: int = field(default=32, metadata={"help": "Replies scored per forward pass."})

    def __post_init__(self):
        if self.by not in BY:
            raise ValueError(f"by: {self.by!r} is not one of {', '.join(BY)}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.round < 1:
            raise ValueError(f"round must be at least 1, got {self.round}.")


# --- the priorities: pure functions of the members' scores ------------------------------------------------------


def pair_margins(scores: np.ndarray) -> np.ndarray:
    """``scores[M, K]`` (M members, K replies) -> ``margins[M, P]``: ``r_i - r_j`` for every pair i < j."""
    pairs = list(combinations(range(scores.shape[1]), 2))
    return np.stack([scores[:, i] - scores[:, j] for i, j in pairs], axis=1)


def disagreement_priority(scores: np.ndarray) -> float:
    """The std across members (ddof 0) of each pair's margin, averaged over the pairs."""
    return float(pair_margins(scores).std(axis=0).mean())


def uncertainty_priority(scores: np.ndarray) -> float:
    """``1 - |2p - 1|`` of the members' mean ``p = sigmoid(margin)``, averaged over the pairs: 1 when the ensemble
    gives a pair even odds, towards 0 when it is sure either way."""
    p = (1.0 / (1.0 + np.exp(-pair_margins(scores)))).mean(axis=0)
    return float((1.0 - np.abs(2.0 * p - 1.0)).mean())


def random_priority(prompt_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, prompt id): the same order in every process and on every re-run."""
    digest = hashlib.sha256(f"{seed}\x1fselect\x1f{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


PRIORITY = {"disagreement": disagreement_priority, "uncertainty": uncertainty_priority}


def round_priorities(values: list[float], round_: int) -> list[float]:
    """``round - 1`` plus each value's quantile among ``values`` (the lowest 0, the highest (n-1)/n; equal values
    share the lowest quantile of their group)."""
    order = sorted(values)
    first: dict[float, int] = {}
    for rank, value in enumerate(order):
        first.setdefault(value, rank)
    return [round_ - 1 + first[v] / len(values) for v in values]


# --- scoring the candidates -------------------------------------------------------------------------------------


def replies_of(row: dict[str, Any], where: str) -> list[str]:
    replies = row.get("candidates")
    if not isinstance(replies, list) or len(replies) < 2 or not all(isinstance(t, str) for t in replies):
        raise DataError(f"{where}: 'candidates' must be a list of at least two reply texts.")
    return replies


def ensemble_members(config: SelectionConfig) -> list[Path]:
    """The members of the reward-model ensemble; a clear error when there is no ensemble to disagree."""
    members = runs.reward_models(config.run, config.runs_dir, config.reward_models)
    if len(members) < 2:
        where = config.reward_models or runs.stage_dir(config.run, "rm", config.runs_dir)
        raise ValueError(
            f"by: {config.by} needs a reward-model ensemble (an ensemble.json with 2 or more members), but {where} "
            "holds one model. Train the previous round's reward model with `ensemble: 3` in configs/rm.yaml "
            '(make rm ARGS="--ensemble 3"), or select with `by: random`.'
        )
    return members


def member_scores(members: list[Path], rows: list[dict[str, Any]], batch_size: int) -> list[np.ndarray]:
    """``scores[item][M, K]``: every member's score of every reply, rendered in the members' chat template as the
    reward model was trained (``reward.data.Renderer``) and scored as ``make rm`` scores its held-out pairs."""
    from transformers import AutoTokenizer

    from pipeline.lib.scoring import score_sequences
    from reward.data import Renderer

    render = Renderer(AutoTokenizer.from_pretrained(members[0]))
    sequences = []
    for n, row in enumerate(rows, start=1):
        prompt = prompt_messages(row.get("prompt"), f"row {n}")
        sequences.append([render(prompt, [{"role": "assistant", "content": t}]) for t in replies_of(row, f"row {n}")])
    flat = [ids for item in sequences for ids in item]
    tables = [score_sequences(member, flat, batch_size) for member in members]
    return [np.array([[table[tuple(ids)] for ids in item] for table in tables]) for item in sequences]


def priorities(config: SelectionConfig, rows: list[dict[str, Any]]) -> tuple[list[float], list[Path]]:
    if config.by == "random":
        return [random_priority(str(row.get("prompt_id", n)), config.seed) for n, row in enumerate(rows, 1)], []
    members = ensemble_members(config)
    priority = PRIORITY[config.by]
    return [priority(scores) for scores in member_scores(members, rows, config.batch_size)], members


def main(config: SelectionConfig) -> dict[str, Any]:
    stage = Stage("selection", config.run, config.runs_dir, [config], "none")

    # step 1. the new candidates, and (unless random) the last round's ensemble.
    source = runs.stage_output(config.run, "candidates", config.runs_dir, config.candidates)
    rows = read_table(source)
    if not rows:
        raise DataError(f"{source} holds no candidates to prioritise.")
    for n, row in enumerate(rows, start=1):  # a bad row is named before any model loads
        prompt_messages(row.get("prompt"), f"{source}, row {n}")
        replies_of(row, f"{source}, row {n}")

    # step 2. each item's priority.
    with stage.timed("score_s"):
        values, members = priorities(config, rows)

    if not all(math.isfinite(v) for v in values):
        raise DataError(f"Some priorities are not finite ({config.by}): check the reward models in {members[0]}.")

    # step 3. the rows with their priorities, in the input's order, for import-candidates.
    ranked = round_priorities(values, config.round)
    rows_out = ({**row, "priority": p, "selection_score": v} for row, p, v in zip(rows, ranked, values, strict=True))
    write_jsonl(stage.dir / CANDIDATES, rows_out)
    ordered = sorted(values, reverse=True)
    metrics = {
        "items": len(rows),
        "by": config.by,
        "round": config.round,
        "members": len(members),
        "score_max": ordered[0],
        "score_median": ordered[len(ordered) // 2],
        "score_min": ordered[-1],
    }
    inputs = {"candidates": source, **{f"reward_model_{i}": m for i, m in enumerate(members)}}
    headline = f"{len(rows)} items by {config.by}: {ordered[-1]:.3g} .. {ordered[0]:.3g} (median {ordered[len(ordered) // 2]:.3g})"
    return stage.finish(
        metrics=metrics, inputs=inputs, outputs={"candidates": stage.dir / CANDIDATES}, headline=headline
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse_configs((SelectionConfig,))))
