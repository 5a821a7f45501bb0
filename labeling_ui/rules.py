"""The rules of a label: the rank convention, what a valid submission or imported item is. Pure functions, no database.

Rank convention: 1 = best; tied candidates share a rank; ranks are stored DENSE (1, 1, 2: no gaps). The competition
form of the same ranking (1, 1, 3) is accepted too and stored dense. A refused submission raises ``RankingError``,
whose message is shown to the labeler as is; a refused import row raises ``ValueError`` naming the row.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FLAGS = ("unsafe", "private_data", "factually_wrong", "off_topic")
MAX_TEXT = 5000  # characters of a comment or skip reason
MAX_SUBMISSION_ID = 128
MAX_SECONDS = 3600.0  # time spent on one item as stored: people rank 4 replies in well under a minute
# Unicode's bidirectional controls (embeddings, overrides, isolates, marks): in a prompt or a reply they make the
# page show text in another order than it is stored (a reply storing "refund of \u202e05" reads "refund of 50").
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
RELOAD = "Reload the page and try again."


class RankingError(ValueError):
    """A submission the store refuses. The message is shown to the labeler as is: what is wrong, what to do."""


@dataclass(frozen=True)
class Submission:
    """One ranking as a labeler sent it (from the page, the API or a simulated labeler) on its way to the store.

    ``submission_id`` is chosen by the client, once per form: sending the same one again stores nothing new.
    """

    submission_id: str
    item_id: str
    ranks: Mapping[str, object]  # {candidate_id: rank}, 1 = best; whole numbers or their text, checked on the way in
    none_acceptable: bool = False
    flags: Mapping[str, Iterable[str] | str] | None = None  # {candidate_id: [flag, ...]}
    comment: str = ""
    seconds_spent: float | None = None
    display_order: list[str] | None = None  # candidate ids as shown; None: the labeler's own order (API clients)


# --- rank forms ---------------------------------------------------------------------------------------------------


def dense_ranks(values: Sequence[float]) -> list[int]:
    """Smaller value = better rank, ties share a rank, no gaps: [10, 10, 30] -> [1, 1, 2]."""
    distinct = sorted(set(values))
    return [distinct.index(v) + 1 for v in values]


def competition_ranks(values: Sequence[float]) -> list[int]:
    """Ties share a rank and the next rank skips the tied places: [10, 10, 30] -> [1, 1, 3]."""
    return [1 + sum(other < v for other in values) for v in values]


def ranks_from_scores(scores: Sequence[float], decimals: int = 6) -> list[int]:
    """Dense ranks where the HIGHEST score is rank 1; scores equal to ``decimals`` places tie (float noise)."""
    return dense_ranks([-round(s, decimals) for s in scores])


# --- a submitted ranking ------------------------------------------------------------------------------------------


def _as_rank(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def normalize_ranks(ranks: Mapping[str, object], candidate_ids: Sequence[str]) -> dict[str, int]:
    """Check a labeler's ranks and return them dense, keyed by candidate id; RankingError says what to fix.

    Accepted: every candidate ranked with a whole number in 1..K, ties allowed, either with no gaps (1, 1, 2) or
    skipping the tied places (1, 1, 3). Both forms say the same thing and are stored as the first.
    """
    k = len(candidate_ids)
    if set(ranks) - set(candidate_ids):
        raise RankingError(f"This form is out of date: it ranks a response this item does not have. {RELOAD}")
    given = {cid: ranks[cid] for cid in candidate_ids if ranks.get(cid) not in (None, "")}
    missing = k - len(given)
    if missing:
        raise RankingError(f"Rank every response: {missing} of {k} have no rank yet.")
    values = [rank for cid in candidate_ids if (rank := _as_rank(given[cid])) is not None]
    if len(values) < k:
        raise RankingError(f"Ranks must be whole numbers from 1 (best) to {k}.")
    out_of_range = sorted({v for v in values if not 1 <= v <= k})
    if out_of_range:
        raise RankingError(f"Ranks go from 1 (best) to {k}; {out_of_range[0]} is out of range.")
    if min(values) != 1:
        raise RankingError(f"The best response gets rank 1; these ranks start at {min(values)}.")
    if values != dense_ranks(values) and values != competition_ranks(values):
        shown = ", ".join(map(str, sorted(values)))
        raise RankingError(
            f"The ranks {shown} leave a gap. Tied responses share a rank and the next one follows on "
            "(1, 1, 2, ...) or skips the tied places (1, 1, 3, ...). Fix the ranks and submit again."
        )
    return dict(zip(candidate_ids, dense_ranks(values), strict=True))


def normalize_flags(flags: Mapping[str, Iterable[str] | str] | None, candidate_ids: Sequence[str]) -> dict[str, list]:
    """Flags keyed by candidate id, each a sorted list of known flags; candidates without flags are left out."""
    out = {}
    for cid, names in (flags or {}).items():
        if cid not in candidate_ids:
            raise RankingError(f"This form is out of date: it flags a response this item does not have. {RELOAD}")
        names = [names] if isinstance(names, str) else list(names)
        unknown = sorted(set(names) - set(FLAGS))
        if unknown:
            raise RankingError(f"Unknown flag {unknown[0]!r}. The flags are: {', '.join(FLAGS)}.")
        if names:
            out[cid] = sorted(set(names))
    return dict(sorted(out.items()))


def check_text(value: str, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise RankingError(f"The {what} must be text.")
    if len(value) > limit:
        raise RankingError(f"The {what} is {len(value)} characters long; keep it to {limit}.")
    return value


def check_submission_id(submission_id: str) -> None:
    if not isinstance(submission_id, str) or not 0 < len(submission_id) <= MAX_SUBMISSION_ID:
        raise RankingError(f"This form has no valid submission id. {RELOAD}")


def check_display_order(order: Sequence[str], candidate_ids: Sequence[str]) -> list[str]:
    if sorted(order) != sorted(candidate_ids):
        raise RankingError(f"This form is out of date: its responses do not match the item. {RELOAD}")
    return list(order)


def check_seconds(seconds: float | None) -> float | None:
    """The time spent on an item as stored: refused when it is not a number of seconds or is negative (only a broken
    or hostile client sends that), and clamped to ``MAX_SECONDS`` above it.

    Clamped, not refused: the page measures the time, not the labeler, so a labeler who left the tab open over lunch
    could not fix a refusal and would lose their ranking. The clamp keeps one such item (or an API client sending
    99999) from weighing more than an hour in the admin's statistics.
    """
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise RankingError(f"The time spent must be a number of seconds. {RELOAD}")
    if seconds < 0:
        raise RankingError(f"The time spent cannot be negative. {RELOAD}")
    return min(float(seconds), MAX_SECONDS)


def show_bidi_controls(text: str) -> str:
    """``text`` with every bidirectional control replaced by its code point in brackets, e.g. "[U+202E]": what the
    page shows of a prompt or a candidate, so that no invisible character reorders what the labeler reads."""
    return BIDI_CONTROLS.sub(lambda match: f"[U+{ord(match.group()):04X}]", text)


# --- an imported item ---------------------------------------------------------------------------------------------


def _hash(*parts: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:length]


def candidate_id(text: str) -> str:
    return _hash("candidate", text, length=12)


def item_id(prompt_messages: list[dict], texts: Sequence[str], is_gold: bool) -> str:
    """A hash of the content (candidate order ignored): the same prompt and candidates always give the same id."""
    return _hash("gold" if is_gold else "item", prompt_messages, sorted(texts), length=32)


def candidate_list(texts: object, where: str) -> list[dict[str, str]]:
    """An imported row's candidates as [{"id", "text"}]: two or more, none empty, no two the same."""
    if not isinstance(texts, list) or len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"{where}: 'candidates' must be a list of at least two non-empty texts.")
    stripped = [t.strip() for t in texts]
    duplicates = [t for t, n in Counter(stripped).items() if n > 1]
    if duplicates:
        raise ValueError(f"{where}: two candidates are the same text ({duplicates[0][:40]!r}...): keep one of them.")
    return [{"id": candidate_id(t), "text": t} for t in texts]


def gold_ranking(ranks: object, candidate_ids: Sequence[str], where: str) -> dict[str, int]:
    """A gold row's reference ranks (a list aligned with its candidates) as {candidate_id: dense rank}."""
    if not isinstance(ranks, list) or len(ranks) != len(candidate_ids):
        raise ValueError(f"{where}: 'gold_ranking' must be a list of ranks, one per candidate.")
    try:
        return normalize_ranks(dict(zip(candidate_ids, ranks, strict=True)), candidate_ids)
    except RankingError as error:
        raise ValueError(f"{where}: bad 'gold_ranking' {ranks}: {error}") from error
