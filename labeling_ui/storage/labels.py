"""Everyone's labels: every current ranking (what the export reads) and how far the labeling is."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from labeling_ui.db import Item, Ranking, Review, User
from labeling_ui.storage.base import StoreBase


@dataclass
class Progress:
    """How far the labeling of a database is; gold items are left out of both counts."""

    items: int  # regular items imported
    rankings: int  # current rankings of them (an edit replaces a ranking, it does not add one)


class Labels(StoreBase):
    def all_current_rankings(self) -> list[dict]:
        """Every labeler's current ranking with its item, sorted by (prompt_id, item_id, username).

        ``ranks_list`` holds the ranks aligned with ``candidates`` (the stored order, not the display order);
        ``excluded`` and ``reviewed`` are the admins' decisions on the item (``set_review``).
        """
        query = (
            sa.select(Ranking, Item, User, Review)
            .join(Item, Item.id == Ranking.item_id)
            .join(User, User.id == Ranking.user_id)
            .outerjoin(Review, Review.item_id == Item.id)
            .where(Ranking.is_current)
            .order_by(Item.prompt_id, Item.id, User.username)
        )
        with self._read() as session:
            rows = session.execute(query).tuples().all()
        return [
            {
                **self._ranking_dict(ranking),
                "item_id": item.id,
                "prompt_id": item.prompt_id,
                "prompt": item.prompt,
                "prompt_messages": item.prompt_messages,
                "candidates": item.candidates,
                "ranks_list": [ranking.ranks[c["id"]] for c in item.candidates],
                "is_gold": item.is_gold,
                "gold_ranking": item.gold_ranking,
                "username": user.username,
                "simulated": user.simulated,
                "display_order": ranking.display_order,
                "seconds_spent": ranking.seconds_spent,
                "excluded": bool(review and review.excluded),
                "reviewed": bool(review and review.reviewed),
            }
            for ranking, item, user, review in rows
        ]

    def count_rankings(self, current_only: bool = False) -> int:
        """Stored ranking rows, every version counted; ``current_only``: one per (item, labeler)."""
        query = sa.select(sa.func.count()).select_from(Ranking)
        with self._read() as session:
            return session.scalar(query.where(Ranking.is_current) if current_only else query)

    def labeling_progress(self) -> Progress:
        """Regular items and their current rankings, read in one snapshot."""
        rankings = (
            sa.select(sa.func.count())
            .select_from(Ranking)
            .join(Item, Item.id == Ranking.item_id)
            .where(Ranking.is_current, ~Item.is_gold)
        )
        with self._read() as session:
            items = session.scalar(sa.select(sa.func.count()).select_from(Item).where(~Item.is_gold))
            return Progress(items=items, rankings=session.scalar(rankings))
