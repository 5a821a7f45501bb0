"""Which item a labeler gets next, and in which order its candidates are shown: small pure functions.

The rules (``LabelStore.next_item`` applies them to the database):
- a regular item is ranked by ``overlap`` different labelers; items with fewer rankings (plus leases held by other
  labelers) come first, then import order;
- nobody gets an item twice: not one they ranked, and not one they skipped (it goes to the others);
- gold items are mixed in at ``gold_rate``: a labeler's n-th item is gold when ``floor(n * rate + phase)`` steps up,
  with a per-labeler phase, so over any stretch of N items a labeler gets N * rate gold items give or take one, and
  labelers do not all meet gold at the same moment. Every labeler may do every gold item once; gold items are only
  interleaved with real work, never handed out alone;
- which prompts become gold items at import (``split_gold_by_rubric``) depends only on the prompt id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
from collections.abc import Callable, Iterable, Sequence

from labeling_ui.rules import ranks_from_scores, user_message

LEASE = dt.timedelta(minutes=30)  # an item handed out and not ranked holds its slot this long


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of the parts that is the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def display_order(candidate_ids: Sequence[str], username: str, item_id: str, seed: int = 0) -> list[str]:
    """The candidates shuffled for this labeler: the same (labeler, item) always gets the same order."""
    order = list(candidate_ids)
    random.Random(stable_hash(seed, "display", username, item_id)).shuffle(order)
    return order


def gold_phase(username: str, seed: int = 0) -> float:
    """Where in the gold cycle this labeler starts, in [0, 1)."""
    return stable_hash(seed, "gold", username) / 2**64


def is_gold_turn(n_done: int, rate: float, phase: float) -> bool:
    """Whether the labeler's next item (after ``n_done`` ranked or skipped) should be a gold item."""
    return math.floor((n_done + 1) * rate + phase) > math.floor(n_done * rate + phase)


def pick_regular(loads: Iterable[tuple[str, int]], overlap: int) -> str | None:
    """The item with the smallest load below ``overlap``; ties go to the earliest in the given (import) order.

    ``loads`` holds (item_id, labelers who ranked it or hold a lease on it) for the items this labeler may still do.
    """
    best: tuple[int, int, str] | None = None
    for position, (item_id, load) in enumerate(loads):
        if load < overlap and (best is None or (load, position) < best[:2]):
            best = (load, position, item_id)
    return best[2] if best else None


def gold_order(item_ids: Iterable[str], username: str, seed: int = 0) -> list[str]:
    """Gold items in this labeler's own order, so labelers do not all meet the same gold item first."""
    return sorted(item_ids, key=lambda item_id: (stable_hash(seed, "gold-order", username, item_id), item_id))


def planned_remaining(n_done: int, open_regular: int, open_gold: int, rate: float, phase: float) -> int:
    """How many more items the labeler will be given: the open regular items plus the gold turns among them."""
    remaining = 0
    while open_regular:
        if open_gold and is_gold_turn(n_done, rate, phase):
            open_gold -= 1
        else:
            open_regular -= 1
        n_done += 1
        remaining += 1
    return remaining


def split_gold_by_rubric(
    rows: Sequence[dict], share: float, rubric: Callable[[str, str], float]
) -> tuple[list[dict], list[dict]]:
    """(regular rows, gold rows): a ``share`` of the prompts, picked by a hash of the prompt id, become gold items
    whose ``gold_ranking`` is ``rubric(prompt, response)`` ranked (the highest score first, equal scores tied).

    The pick depends only on the prompt id, so re-importing a grown file keeps every earlier decision.
    """
    regular, gold = [], []
    for row in rows:
        if stable_hash("rubric-gold", row["prompt_id"]) / 2**64 < share:
            prompt = user_message(row["prompt"])
            scores = [rubric(prompt, text) for text in row["candidates"]]
            gold.append({**row, "gold_ranking": ranks_from_scores(scores)})
        else:
            regular.append(row)
    return regular, gold
