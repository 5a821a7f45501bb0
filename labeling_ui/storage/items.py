"""``LabelStore``'s items: the candidate generator's items and the gold items, checked and queued on import."""

from __future__ import annotations

import math
from collections.abc import Iterable

import sqlalchemy as sa

from labeling_ui.config import PAGE_SLOTS
from labeling_ui.db import Item, QueueEntry, advisory_lock, utcnow
from labeling_ui.rules import candidate_list, gold_ranking, item_id
from labeling_ui.storage.base import State, StoreBase
from pipeline.lib.prompts import prompt_messages, user_message


class Items(StoreBase):
    def import_candidates(self, rows: Iterable[dict]) -> int:
        """Add the candidate generator's items; returns how many were new (re-importing the same rows adds 0)."""
        return self._add_items(self._new_items(rows, gold=False))

    def add_gold_items(self, rows: Iterable[dict]) -> int:
        """Add gold items: ``gold_ranking`` holds the reference ranks aligned with ``candidates`` (1 = best)."""
        return self._add_items(self._new_items(rows, gold=True))

    def _new_items(self, rows: Iterable[dict], gold: bool) -> list[Item]:
        """The rows as items; a row the page could not show (more than ``max_candidates`` responses) is refused,
        so no labeler is ever handed an item they can only look at."""
        items, most = [], self.config.max_candidates
        for i, row in enumerate(rows, start=1):
            where = f"{'gold row' if gold else 'row'} {i} (prompt_id {row.get('prompt_id')!r})"
            messages, candidates = (
                prompt_messages(row.get("prompt"), where),
                candidate_list(row.get("candidates"), where),
            )
            if len(candidates) > most:
                raise ValueError(
                    f"{where}: {len(candidates)} candidates, but the labeling page shows at most "
                    f"{most} (max_candidates in configs/labeling.yaml, up to {PAGE_SLOTS}): keep the "
                    f"best {most} of them, or sample fewer (candidates' k). Nothing was imported."
                )
            ids = [c["id"] for c in candidates]
            ranking = gold_ranking(row.get("gold_ranking"), ids, where) if gold else None
            priority = row.get("priority", 0.0)
            if isinstance(priority, bool) or not isinstance(priority, int | float) or not math.isfinite(priority):
                raise ValueError(
                    f"{where}: 'priority' must be a finite number (higher is labeled first), got {priority!r}. "
                    "Nothing was imported."
                )
            items.append(
                Item(
                    id=item_id(messages, [c["text"] for c in candidates], is_gold=gold),
                    prompt_id=str(row.get("prompt_id") or item_id(messages, [], False)),
                    prompt=user_message(messages),
                    prompt_messages=messages,
                    candidates=candidates,
                    is_gold=gold,
                    gold_ranking=ranking,
                    provenance=row.get("provenance"),
                    priority=float(priority),
                )
            )
        return items

    def _add_items(self, items: list[Item]) -> int:
        now = utcnow()
        with self._begin() as session:
            advisory_lock(session.connection(), "labeling_ui.items")  # `seq` is max + 1
            seen = set(session.scalars(sa.select(Item.id)))
            seq = session.scalar(sa.select(sa.func.max(Item.seq))) or 0
            added = 0
            for item in items:
                if item.id in seen:
                    continue
                seen.add(item.id)
                seq += 1
                item.seq, item.created_at = seq, now
                session.add(item)
                queued = QueueEntry(
                    item_id=item.id, is_gold=item.is_gold, n_rankings=0, sort_key=-item.priority, seq=seq
                )
                session.add(queued)
                added += 1
            new = [item for item in items if item.seq is not None]
            self._counting(session)
            for gold in (False, True):
                if n_new := sum(item.is_gold == gold for item in new):
                    self._count(session, State(is_gold=gold, n_rankings=0, n_held=0), n_new)
        return added
