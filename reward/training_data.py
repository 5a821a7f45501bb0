"""The reward model's training and held-out data: which file to train on (``input_path``), read with ``reward.data``,
checked, split by prompt and tokenized with the policy's chat template (``load_data``).

Held-out data is split by PROMPT: every pair of a prompt (its group_id) lands on the same side, so the eval accuracy
measures generalisation to new prompts, not recall of responses already seen in training under another pairing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from pipeline.lib import runs
from pipeline.lib.errors import DataError, MissingInputError
from pipeline.lib.stage import RunArguments
from pipeline.lib.tables import read_table
from reward import data as rm_data
from reward.config import RMStageConfig
from reward.losses import rank_gap_margin


@dataclass
class RMData:
    """The data after reading, checking, splitting by prompt and tokenizing."""

    train: Dataset
    eval: Dataset
    eval_pairs: list[dict[str, Any]]  # held-out pairs with token ids: what the final evaluation scores
    train_sequences: list[list[int]]  # every training response (prompt + response ids): for reward_stats.json
    train_rows: list[dict[str, Any]]  # the rows of ``train``, and the prompt of each: an ensemble member's bootstrap
    train_groups: list[str]
    prompts: dict[str, int]
    stats: dict[str, Any]


def input_path(run: RunArguments, config: RMStageConfig) -> Path:
    """The file to train on: the export's preferences.jsonl (pairwise) or rankings.jsonl (kway), or the user's."""
    path = runs.stage_output(run.run, "export", run.runs_dir, config.preferences)
    if config.loss == "pairwise":
        path = path / "preferences.jsonl" if (path / "preferences.jsonl").is_file() else path
        if path.is_file():
            check_loss_fits(path, config.loss)
        return path
    if path.is_dir():
        rankings = path / "rankings.jsonl"
    else:
        rankings = path.with_name("rankings.jsonl") if path.name.startswith("preferences.") else path
    if not rankings.exists():
        raise MissingInputError(
            f"loss {config.loss} trains on whole rankings, but there is no {rankings}. Point --preferences at an export folder "
            "(runs/<run>/export/) or a rankings file, or use --loss pairwise."
        )
    if rankings.is_file():
        check_loss_fits(rankings, config.loss)
    return rankings


def check_loss_fits(path: Path, loss: str) -> None:
    """Pairs need the pairwise loss and whole rankings the K-way one: say which setting to change, before every row
    fails with a missing column."""
    first = read_table(path)[0]
    if loss != "pairwise" and {"chosen", "rejected"} <= first.keys():
        raise ValueError(
            f"{path} holds preference pairs (chosen/rejected), but loss: {loss} trains on whole rankings (responses "
            "and ranks, as the export's rankings.jsonl). Train on the pairs with --loss pairwise, or point "
            "--preferences at a rankings file."
        )
    if loss == "pairwise" and {"responses", "ranks"} <= first.keys():
        raise ValueError(
            f"{path} holds whole rankings (responses and ranks), but loss: pairwise trains on pairs. Use "
            "--loss kway, or point --preferences at a pairs file (the export's preferences.jsonl)."
        )


def load_data(config: RMStageConfig, path: Path, tokenizer) -> RMData:
    pairwise = config.loss == "pairwise"
    if pairwise:
        examples, stats = rm_data.load_preferences(path)
    else:  # a ranking that ties every reply says something only to the loss that models ties
        examples, stats = rm_data.load_rankings(path, keep_all_tied=config.loss == "kway_ties")
    if len({e["group_id"] for e in examples}) < 2:
        dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in stats.dropped.most_common()) or "none"
        raise DataError(
            f"{path}: {stats.rows_in} rows read, {len(examples)} usable {'pairs' if pairwise else 'rankings'} left, "
            f"from {len({e['group_id'] for e in examples})} prompts; dropped: {dropped}. The reward model needs "
            "pairs that prefer one different reply over another, from at least 2 prompts: check the data (identical "
            "or tied replies teach nothing), or label more."
        )
    train_groups, eval_groups = split_by_group((e["group_id"] for e in examples), config.eval_fraction, config.seed)
    tokenize = rm_data.tokenize_pairs if pairwise else rm_data.tokenize_rankings
    examples, too_long = tokenize(examples, tokenizer, config.max_length)
    stats.dropped["too_long"] += too_long
    train = [e for e in examples if e["group_id"] in train_groups]
    held_out = [e for e in examples if e["group_id"] in eval_groups]
    if not train or not held_out:
        raise DataError(
            f"{path}: {len(train)} training and {len(held_out)} held-out examples are left after dropping "
            f"{dict(stats.dropped)}; both need some. Add data, or raise max_length if many were too long."
        )

    if pairwise:
        use_margin = config.margin_from_rank_gap
        if use_margin and any(e["rank_gap"] is None for e in examples):
            raise DataError(f"{path}: margin_from_rank_gap needs a rank_gap on every pair. Add it, or turn it off.")

        def columns(e):
            margin = {"margin": float(rank_gap_margin(e["rank_gap"]))} if use_margin else {}
            return {"chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"], **margin}

        eval_pairs = held_out
        train_sequences = [ids for e in train for ids in (e["chosen_ids"], e["rejected_ids"])]
    else:
        eval_pairs = [pair for ranking in held_out for pair in rm_data.ranking_pairs(ranking)]
        # Tied pairs of the training rankings: dropped by kway, modelled by kway_ties.
        stats.tied_pairs = sum(a == b for e in train for i, a in enumerate(e["ranks"]) for b in e["ranks"][i + 1 :])
        # Rankings of one prompt's responses by several labelers share their forward passes.
        train, held_out = rm_data.rankings_by_item(train), rm_data.rankings_by_item(held_out)

        def columns(e):
            return {"response_ids": e["response_ids"], "rankings": e["rankings"]}

        train_sequences = [ids for e in train for ids in e["response_ids"]]
    train_rows = [columns(e) for e in train]
    return RMData(
        train=Dataset.from_list(train_rows),
        eval=Dataset.from_list([columns(e) for e in held_out]),
        eval_pairs=eval_pairs,
        train_sequences=train_sequences,
        train_rows=train_rows,
        train_groups=[e["group_id"] for e in train],
        prompts={"train": len({e["group_id"] for e in train}), "eval": len({e["group_id"] for e in held_out})},
        stats=stats.as_dict(),
    )


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
