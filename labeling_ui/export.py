"""Export the labels as preference data: ``python -m labeling_ui export --run R``.

Each current K-way ranking becomes its C(K, 2) ordered pairs minus the tied ones, written to ``runs/<run>/export/``:
- ``preferences.jsonl`` / ``preferences.parquet``: TRL's conversational preference format (prompt, chosen,
  rejected) plus group_id (the prompt id), item_id, rank_gap and labeler;
- ``rankings.jsonl``: the full rankings, one row per (item, labeler), for K-way losses;
- ``summary.json`` and ``config.yaml`` (``pipeline.lib.runs.StageRun``): counts and agreement.

How labelers are combined (``aggregation``): ``all`` keeps every labeler's pairs; ``majority`` keeps, per item and
candidate pair, the direction more labelers chose (labelers who tied the pair abstain; an even vote drops the pair);
``drop_contested`` keeps only the pairs every labeler of the item ordered the same way. Gold items stay out unless
``include_gold``, and items an admin excluded (Admin tab, flagged items) always stay out. The same database always
gives the same bytes: everything is sorted and no file holds a time.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from labeling_ui import stats
from labeling_ui.db import default_db_path, default_db_url, shown_url
from labeling_ui.storage import LabelStore
from pipeline.lib import runs
from pipeline.lib.errors import MissingInputError
from pipeline.lib.pairs import ranking_to_pairs
from pipeline.lib.tables import write_jsonl

AGGREGATIONS = ("all", "majority", "drop_contested")
AGGREGATED_LABELER = {"majority": "majority", "drop_contested": "consensus"}


def aggregate_pairs(
    rankings: Mapping[str, Sequence[int]], aggregation: str
) -> tuple[list[tuple[int, int, int, str]], Counter]:
    """The pairs of one item as (chosen_idx, rejected_idx, rank_gap, labeler), and how many pairs were dropped.

    ``rankings`` maps labeler -> ranks of the item's responses. Dropped pairs are counted as ``ties`` (no labeler
    preferred either response) or ``contested`` (the labelers did not settle the direction, see the module doc).
    An aggregated pair's rank gap is the median (the lower one of two) of the gaps its supporters gave it.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}.")
    dropped: Counter = Counter()
    if aggregation == "all":
        out = []
        for labeler in sorted(rankings):
            ranks = rankings[labeler]
            pairs = ranking_to_pairs(list(range(len(ranks))), list(ranks))
            dropped["ties"] += len(ranks) * (len(ranks) - 1) // 2 - len(pairs)
            out += [(chosen, rejected, gap, labeler) for chosen, rejected, gap in pairs]
        return out, dropped

    k = len(next(iter(rankings.values())))
    out = []
    for i, j in itertools.combinations(range(k), 2):
        i_wins = [ranks[j] - ranks[i] for ranks in rankings.values() if ranks[i] < ranks[j]]
        j_wins = [ranks[i] - ranks[j] for ranks in rankings.values() if ranks[j] < ranks[i]]
        if not i_wins and not j_wins:
            dropped["ties"] += 1
        elif aggregation == "majority" and len(i_wins) != len(j_wins):
            chosen, rejected, gaps = (i, j, i_wins) if len(i_wins) > len(j_wins) else (j, i, j_wins)
            out.append((chosen, rejected, statistics.median_low(gaps), AGGREGATED_LABELER[aggregation]))
        elif aggregation == "drop_contested" and len(rankings) in (len(i_wins), len(j_wins)):
            chosen, rejected, gaps = (i, j, i_wins) if i_wins else (j, i, j_wins)
            out.append((chosen, rejected, statistics.median_low(gaps), AGGREGATED_LABELER[aggregation]))
        else:
            dropped["contested"] += 1
    return out, dropped


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _write_parquet(path: Path, rows: list[dict]) -> None:
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    schema = pa.schema(
        [
            ("prompt", messages),
            ("chosen", messages),
            ("rejected", messages),
            ("group_id", pa.string()),
            ("item_id", pa.string()),
            ("rank_gap", pa.int64()),
            ("labeler", pa.string()),
        ]
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)


def export_preferences(
    store_or_url: LabelStore | str, out_dir: Path, aggregation: str = "all", include_gold: bool = False
) -> dict[str, Any]:
    """Write preferences.jsonl, preferences.parquet and rankings.jsonl into ``out_dir``; returns the metrics."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}.")
    store = store_or_url if isinstance(store_or_url, LabelStore) else LabelStore(store_or_url)
    try:
        rankings = store.all_current_rankings()  # sorted by (prompt_id, item_id, username)
    finally:
        if store is not store_or_url:
            store.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = [r for r in rankings if (include_gold or not r["is_gold"]) and not r["excluded"]]

    preferences, full_rankings = [], []
    dropped: Counter = Counter()
    for item_id, grouped in itertools.groupby(kept, key=lambda r: r["item_id"]):
        group = list(grouped)
        item = group[0]
        prompt = [{"role": m["role"], "content": m["content"]} for m in item["prompt_messages"]]
        responses = [c["text"] for c in item["candidates"]]
        for r in group:
            full_rankings.append(
                {
                    "group_id": item["prompt_id"],
                    "item_id": item_id,
                    "prompt": prompt,
                    "responses": responses,
                    "ranks": r["ranks_list"],
                    "labeler": r["username"],
                    "simulated": r["simulated"],
                    "is_gold": r["is_gold"],
                }
            )
        pairs, item_dropped = aggregate_pairs({r["username"]: r["ranks_list"] for r in group}, aggregation)
        dropped += item_dropped
        for chosen, rejected, gap, labeler in pairs:
            preferences.append(
                {
                    "prompt": prompt,
                    "chosen": _assistant(responses[chosen]),
                    "rejected": _assistant(responses[rejected]),
                    "group_id": item["prompt_id"],
                    "item_id": item_id,
                    "rank_gap": gap,
                    "labeler": labeler,
                }
            )

    write_jsonl(out_dir / "preferences.jsonl", preferences)
    _write_parquet(out_dir / "preferences.parquet", preferences)
    write_jsonl(out_dir / "rankings.jsonl", full_rankings)

    simulated = {r["username"]: r["simulated"] for r in kept}
    return {
        "aggregation": aggregation,
        "include_gold": include_gold,
        "items": len({r["item_id"] for r in kept}),
        "gold_items_excluded": len({r["item_id"] for r in rankings if r["is_gold"]}) if not include_gold else 0,
        "items_excluded_by_admins": len({r["item_id"] for r in rankings if r["excluded"]}),
        "rankings": len(kept),
        "pairs": len(preferences),
        "ties_dropped": dropped["ties"],
        "contested_dropped": dropped["contested"],
        "none_acceptable_rankings": sum(r["none_acceptable"] for r in kept),
        "flagged_rankings": sum(bool(r["flags"]) for r in kept),
        "labelers": len(simulated),
        "simulated_labelers": sum(simulated.values()),
        "all_simulated": bool(simulated) and all(simulated.values()),
        "agreement": stats.agreement(kept),
    }


@dataclass
class ExportConfig:
    run: str = field(default=runs.DEFAULT_RUN, metadata={"help": "Run name: outputs go to <runs_dir>/<run>/export/."})
    runs_dir: str = "runs"
    db: str | None = field(default=None, metadata={"help": "Database URL (default: the run's SQLite file)."})
    aggregation: str = field(default="all", metadata={"help": "all, majority or drop_contested."})
    include_gold: bool = False

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}.")


def main(config: ExportConfig) -> dict[str, Any]:
    """The export stage: read the run's labels, write runs/<run>/export/ with its summary.json."""
    if config.db is None:
        path = default_db_path(config.run, config.runs_dir)
        if not path.exists():
            raise MissingInputError(
                f"No labels for run '{config.run}' at {path}. Import candidates and label first "
                f"(`python -m labeling_ui import-candidates --run {config.run}`), or pass --db URL."
            )
    url = config.db or default_db_url(config.run, config.runs_dir)
    shown = shown_url(url)  # summary.json must not hold a password
    stage = runs.StageRun("export", config.run, config.runs_dir)
    metrics = export_preferences(url, stage.dir, config.aggregation, config.include_gold)
    outputs = {name: stage.dir / name for name in ("preferences.jsonl", "preferences.parquet", "rankings.jsonl")}
    headline = (
        f"{metrics['pairs']} pairs from {metrics['rankings']} rankings of {metrics['items']} items "
        f"by {metrics['labelers']} labelers ({config.aggregation}; {metrics['ties_dropped']} tied and "
        f"{metrics['contested_dropped']} contested pairs dropped)"
    )
    summary = stage.finish(
        dataclasses.replace(config, db=shown),
        metrics=metrics,
        inputs={"labels_db": shown},
        outputs=outputs,
        extra={"headline": headline},
    )
    print(f"[export] {headline} -> {stage.dir}")
    if metrics["all_simulated"]:
        print("[export] note: every label comes from simulated labelers, not people.")
    if metrics["pairs"] == 0:
        raise ValueError(
            f"the export wrote 0 preference pairs ({metrics['rankings']} rankings of {metrics['items']} items; "
            f"{metrics['ties_dropped']} tied and {metrics['contested_dropped']} contested pairs dropped): nothing a "
            "reward model can learn from. Label more items, ask labelers to break ties, or use --aggregation all."
        )
    return summary
