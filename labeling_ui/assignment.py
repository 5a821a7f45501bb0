"""Which item a labeler gets next, and in which order its candidates are shown: small pure functions.

The rules (``LabelStore.assign`` applies them to the database, in index order):
- a regular item is ranked by ``overlap`` different labelers; it is open while its rankings plus the live leases of
  other labelers are below ``overlap``. Items with fewer rankings come first, then the higher ``priority`` (a
  number imported with the item, e.g. how much the last round's reward models disagree on it), then import order;
- a labeler holds one item at a time (a lease), renewed while their page shows it; a lease nobody renewed for
  ``lease_seconds`` no longer counts, so the last items of a campaign go to the labelers who are still working;
- nobody gets an item twice: not one they ranked, and not one they skipped (it goes to the others);
- gold items are mixed in at ``gold_rate``: a labeler's n-th item is gold when ``floor(n * rate + phase)`` steps up,
  with a per-labeler phase, so over any stretch of N items a labeler gets N * rate gold items give or take one, and
  labelers do not all meet gold at the same moment. Every labeler may do every gold item once, the least-ranked
  first; gold items are only interleaved with real work, never handed out alone;
- which prompts become gold items at import (``split_gold_by_rubric``) depends only on the prompt id.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence

from labeling_ui.rules import ranks_from_scores
from pipeline.lib.prompts import user_message


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


def gold_turns(n_done: int, steps: int, rate: float, phase: float) -> int:
    """How many of the labeler's next ``steps`` items (after ``n_done``) fall on gold turns."""
    return math.floor((n_done + steps) * rate + phase) - math.floor(n_done * rate + phase)


def planned_remaining(n_done: int, open_regular: int, open_gold: int, rate: float, phase: float) -> int:
    """How many more items the labeler will be given: the open regular items plus the gold turns among them.

    The last item given is a regular one, so the answer is the smallest T with T = open_regular + (gold items taken
    in the first T turns). Iterating from T = open_regular reaches it: each pass adds the gold turns of the stretch
    the last pass added (2 or 3 passes at a rate of 0.1), with no loop over the items themselves.
    """
    if open_regular <= 0:
        return 0
    steps = open_regular
    while True:
        more = open_regular + min(open_gold, gold_turns(n_done, steps, rate, phase))
        if more == steps:
            return steps
        steps = more


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
