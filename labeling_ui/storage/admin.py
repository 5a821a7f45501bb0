"""What admins see and decide: an item's review (excluded from the export, looked at), and the labeling by
rankings per item and by import."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from labeling_ui.db import Item, QueueCount, QueueEntry, Review, utcnow
from labeling_ui.rules import check_text
from labeling_ui.storage.base import StoreBase, iso


class Admin(StoreBase):
    def set_review(
        self, item_id: str, by: str, excluded: bool | None = None, reviewed: bool | None = None
    ) -> dict[str, bool]:
        """Leave the item out of the export (``excluded``) and/or mark it looked at (``reviewed``); None keeps
        what was decided before. Returns the item's decisions now."""
        with self._begin() as session:
            if session.get(Item, item_id) is None:
                raise ValueError(f"No item {item_id!r}: refresh the Admin tab.")
            before = session.get(Review, item_id)
            values = {
                "item_id": item_id,
                "excluded": bool(before and before.excluded) if excluded is None else excluded,
                "reviewed": bool(before and before.reviewed) if reviewed is None else reviewed,
                "reviewed_by": check_text(by, "name", 64),
                "updated_at": utcnow(),
            }
            self._upsert(session, Review, "item_id", values)
        return {"excluded": values["excluded"], "reviewed": values["reviewed"]}

    def rankings_per_item(self) -> dict[int, int]:
        """{number of current rankings: regular items with that many} (none left out: no zero counts)."""
        items = sa.func.sum(QueueCount.items)
        query = (
            sa.select(QueueCount.n_rankings, items)
            .where(QueueCount.is_gold == sa.false())
            .group_by(QueueCount.n_rankings)
            .having(items > 0)
        )
        with self._read() as session:
            return {n: int(items) for n, items in sorted(session.execute(query).tuples().all())}

    def import_batches(self) -> list[dict[str, Any]]:
        """Per import of regular items (the pipeline imports once per round), oldest first: when, how many items,
        their current rankings, and how many have ``overlap`` of them."""
        full = sa.func.count().filter(QueueEntry.n_rankings >= self.config.overlap)
        query = (
            sa.select(Item.created_at, sa.func.count(), sa.func.sum(QueueEntry.n_rankings), full)
            .join(QueueEntry, QueueEntry.item_id == Item.id)
            .where(QueueEntry.is_gold == sa.false())
            .group_by(Item.created_at)
            .order_by(Item.created_at)
        )
        with self._read() as session:
            rows = session.execute(query).tuples().all()
        return [
            {"imported_at": iso(at), "items": items, "rankings": int(rankings or 0), "complete": complete}
            for at, items, rankings, complete in rows
        ]
