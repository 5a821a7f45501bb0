"""The Admin tab's tables and overview, from the dicts ``LabelingService.admin_report`` returns: pure functions,
rounded for reading, with prompts and replies cut short and their bidi controls shown by code point."""

import pandas as pd

from labeling_ui.rules import show_bidi_controls


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def labelers_table(labelers: list[dict]) -> pd.DataFrame:
    columns = ["labeler", "active", "simulated", "rankings", "skips", "median s/item", "gold items", "gold accuracy"]
    rows = [
        [
            s["username"],
            s["active"],
            s["simulated"],
            s["count"],
            s["skips"],
            _round(s["median_seconds"], 1),
            s["gold_done"],
            _round(s["gold_accuracy"], 3),
        ]
        for s in labelers
    ]
    return pd.DataFrame(rows, columns=columns)


def agreement_table(a: dict) -> pd.DataFrame:
    columns = ["items", "labeler pairs", "pairwise agreement", "Kendall's tau", "Krippendorff's alpha"]
    rounded = [_round(a[key], 3) for key in ("pairwise_agreement", "kendall_tau", "krippendorff_alpha")]
    return pd.DataFrame([[a["n_items"], a["n_labeler_pairs"], *rounded]], columns=columns)


def disagreements_table(items: list[dict]) -> pd.DataFrame:
    """Each labeler's ranks in the item's stored order of responses (A, B, ... as imported, not as shown)."""
    rows = [
        [
            item["prompt_id"],
            show_bidi_controls(" ".join(item["prompt"].split())[:100]),
            round(item["agreement"], 2),
            "; ".join(f"{name}: {' '.join(map(str, ranks))}" for name, ranks in sorted(item["ranks"].items())),
        ]
        for item in items
    ]
    return pd.DataFrame(rows, columns=["prompt id", "prompt", "pairwise agreement", "ranks by labeler"])


def _status(item: dict) -> str:
    return "excluded" if item["excluded"] else "reviewed" if item["reviewed"] else "open"


def flagged_table(flagged: list[dict]) -> pd.DataFrame:
    rows = []
    for item in flagged:
        prompt, status = show_bidi_controls(" ".join(item["prompt"].split())[:100]), _status(item)
        head = [item["prompt_id"], prompt, status]
        rows += [[*head, name, "none acceptable", ""] for name in item["none_acceptable_by"]]
        rows += [
            [*head, f["username"], ", ".join(f["flags"]), show_bidi_controls(f["response"])] for f in item["flags"]
        ]
        rows += [[*head, c["username"], "comment", show_bidi_controls(c["comment"])] for c in item["comments"]]
    return pd.DataFrame(rows, columns=["prompt id", "prompt", "status", "labeler", "flag", "response or comment"])


def flagged_choices(flagged: list[dict]) -> list[tuple[str, str]]:
    return [
        (
            f"{item['prompt_id']} | {_status(item)} | {show_bidi_controls(' '.join(item['prompt'].split())[:60])}",
            item["item_id"],
        )
        for item in flagged
    ]


def per_item_table(per_item: dict[int, int], overlap: int) -> pd.DataFrame:
    rows = [[n, items, "complete" if n >= overlap else f"needs {overlap - n} more"] for n, items in per_item.items()]
    return pd.DataFrame(rows, columns=["rankings", "items", ""])


def batches_table(batches: list[dict]) -> pd.DataFrame:
    rows = [
        [i, b["imported_at"][:16].replace("T", " "), b["items"], b["rankings"], b["complete"]]  # to the minute, UTC
        for i, b in enumerate(batches, start=1)
    ]
    return pd.DataFrame(rows, columns=["import", "imported at (UTC)", "items", "rankings", "items complete"])


def overview_text(report: dict) -> str:
    per_item, overlap = report["per_item"], report["overlap"]
    items = sum(per_item.values())
    if not items:
        return "**No items yet.** Import candidates: `python -m labeling_ui import-candidates --run RUN`."
    complete = sum(n for k, n in per_item.items() if k >= overlap)
    rankings = sum(k * n for k, n in per_item.items())
    return (
        f"**{complete} of {items} items complete** ({overlap} rankings each); {rankings} rankings of "
        f"{items * overlap} needed, {max(items * overlap - rankings, 0)} to go."
    )


def users_table(users: list[dict]) -> pd.DataFrame:
    columns = ["user", "role", "active", "simulated", "rankings", "skips", "created"]
    keys = ["username", "role", "active", "simulated", "n_rankings", "n_skips", "created_at"]
    return pd.DataFrame([[u[k] for k in keys] for u in users], columns=columns)
