"""What the admin tab, the simulation summary and the export report about the labels: pure functions of the rows
``LabelStore.list_users`` and ``LabelStore.all_current_rankings`` return.

Per-labeler statistics (counts, time per item, gold accuracy), agreement over shared items, and the flagged items.
Named ``stats`` so that it does not read as the standard library's ``statistics``, which it uses.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from labeling_ui.agreement import agreement_summary, pairwise_agreement


def labeler_stats(users: Sequence[dict], rankings: Sequence[dict]) -> list[dict]:
    """Per labeler: rankings, skips, median seconds per ranking, and accuracy on gold items.

    ``gold_accuracy`` is the mean pairwise agreement (``agreement.pairwise_agreement``) between the labeler's
    ranking and the gold ranking over the gold items they ranked; None before their first one. Admins appear only
    once they ranked something.
    """
    by_user: dict[str, list[dict]] = defaultdict(list)
    for r in rankings:
        by_user[r["username"]].append(r)
    out = []
    for user in users:
        mine = by_user[user["username"]]
        if user["role"] != "labeler" and not mine:
            continue
        seconds = [r["seconds_spent"] for r in mine if r["seconds_spent"] is not None]
        gold = [
            pairwise_agreement(r["ranks_list"], [r["gold_ranking"][c["id"]] for c in r["candidates"]])
            for r in mine
            if r["is_gold"]
        ]
        out.append(
            {
                "username": user["username"],
                "active": user["active"],
                "simulated": user["simulated"],
                "count": len(mine),
                "skips": user["n_skips"],
                "median_seconds": statistics.median(seconds) if seconds else None,
                "gold_done": len(gold),
                "gold_accuracy": sum(gold) / len(gold) if gold else None,
            }
        )
    return out


def agreement(rankings: Sequence[dict]) -> dict:
    """Inter-labeler agreement on the regular items ranked by two labelers or more (see agreement.py)."""
    by_item: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for r in rankings:
        if not r["is_gold"]:
            by_item[r["item_id"]][r["username"]] = r["ranks_list"]
    return agreement_summary(by_item)


def disagreements(rankings: Sequence[dict], limit: int = 20) -> list[dict]:
    """The regular items the labelers disagree on most: each ranked by two labelers or more, with the mean share of
    candidate pairs two of its labelers order alike (``pairwise_agreement``), lowest first, at most ``limit``."""
    by_item: dict[str, list[dict]] = defaultdict(list)
    for r in rankings:
        if not r["is_gold"]:
            by_item[r["item_id"]].append(r)
    items = []
    for item_id, rows in by_item.items():
        if len(rows) < 2:
            continue
        pairs = [pairwise_agreement(a["ranks_list"], b["ranks_list"]) for a, b in itertools.combinations(rows, 2)]
        items.append(
            {
                "item_id": item_id,
                "prompt_id": rows[0]["prompt_id"],
                "prompt": rows[0]["prompt"],
                "agreement": statistics.mean(pairs),
                "ranks": {r["username"]: r["ranks_list"] for r in rows},
            }
        )
    return sorted(items, key=lambda item: (item["agreement"], item["prompt_id"]))[:limit]


def agreement_note(summary: dict, rankings: Sequence[dict], overlap: int) -> str | None:
    """Why the agreement table is empty, in words an admin can act on; None when it has figures."""
    if summary["n_items"]:
        return None
    if overlap < 2:
        return "No agreement to show: overlap is 1, so no item is ranked by two labelers (set overlap: 2 or more)."
    ranked_once = len({r["item_id"] for r in rankings if not r["is_gold"]})
    so_far = {0: "none has a ranking at all", 1: "1 item has one"}.get(ranked_once, f"{ranked_once} items have one")
    return f"No agreement yet: no item has two current rankings yet ({so_far}); it appears once two labelers rank one."


def flagged_items(rankings: Sequence[dict]) -> list[dict]:
    """Items where a labeler flagged a response or found none acceptable, with who said what and what admins
    decided (``excluded`` from the export, ``reviewed``). The queue an admin works through: the open items first,
    then the reviewed, then the excluded; within each, the most recently flagged first."""
    flagged: dict[str, dict[str, Any]] = {}
    for r in rankings:
        if not (r["flags"] or r["none_acceptable"]):
            continue
        entry = flagged.setdefault(
            r["item_id"],
            {
                "item_id": r["item_id"],
                "prompt_id": r["prompt_id"],
                "prompt": r["prompt"],
                "excluded": r["excluded"],
                "reviewed": r["reviewed"],
                "none_acceptable_by": [],
                "flags": [],
                "comments": [],
                "last_flagged_at": r["created_at"],
            },
        )
        entry["last_flagged_at"] = max(entry["last_flagged_at"], r["created_at"])
        texts = {c["id"]: c["text"] for c in r["candidates"]}
        if r["none_acceptable"]:
            entry["none_acceptable_by"].append(r["username"])
        for cid, names in r["flags"].items():
            entry["flags"].append(
                {"username": r["username"], "candidate_id": cid, "response": texts[cid], "flags": names}
            )
        if r["comment"]:
            entry["comments"].append({"username": r["username"], "comment": r["comment"]})
    newest_first = sorted(flagged.values(), key=lambda item: item["last_flagged_at"], reverse=True)
    return sorted(newest_first, key=lambda item: (item["excluded"], item["reviewed"]))
