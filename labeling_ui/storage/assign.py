"""The labeler's work, part one: the item in hand. Which item a labeler is handed, its lease, their draft of it, and
their progress."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from labeling_ui import assignment
from labeling_ui.db import Assignment, Draft, Item, QueueCount, QueueEntry, Ranking, Skip, User, advisory_lock, utcnow
from labeling_ui.rules import FLAGS, MAX_TEXT, RankingError
from labeling_ui.storage.base import ItemView, StoreBase

MAX_DRAFT = 2 * MAX_TEXT  # characters of a draft's JSON: a comment of MAX_TEXT and the ranks and flags of 8 replies


@dataclass
class Assigned:
    """What ``LabelStore.assign`` hands a labeler: their item in hand (None: nothing for them now) and progress."""

    view: ItemView | None
    done: int  # items they ranked
    total: int  # items they ranked plus those they will still be given
    held_by_others: int  # items they could still do that other labelers hold now (None view: the last ones)
    draft: dict[str, Any] | None = None  # their saved draft of the item (``LabelStore.draft``), read with it


def _checked_draft(raw: dict[str, Any], item: Item) -> dict[str, Any]:
    """A stored draft of ``item`` as the page may show it: ranks 1..K of its replies, known flags, texts."""
    ids = [c["id"] for c in item.candidates]
    ranks = {cid: r for cid, r in dict(raw.get("ranks") or {}).items() if cid in ids and r in range(1, len(ids) + 1)}
    flags = {
        cid: [f for f in names if f in FLAGS]
        for cid, names in dict(raw.get("flags") or {}).items()
        if cid in ids and isinstance(names, list)
    }
    comment = raw.get("comment")
    return {
        "ranks": ranks,
        "flags": {cid: names for cid, names in flags.items() if names},
        "none_acceptable": bool(raw.get("none_acceptable")),
        "comment": comment if isinstance(comment, str) else "",
    }


class Assigning(StoreBase):
    @staticmethod
    def _done(user_id: int, item_id: Any) -> sa.ColumnElement[bool]:
        """Whether the labeler ranked or skipped the item: two index lookups ((item_id, user_id, ...) keys)."""
        return sa.or_(
            sa.exists().where(Ranking.item_id == item_id, Ranking.user_id == user_id),
            sa.exists().where(Skip.item_id == item_id, Skip.user_id == user_id),
        )

    def _live(self, now: dt.datetime) -> sa.ColumnElement[bool]:
        """A lease given or renewed less than ``lease_seconds`` ago (``assigned_at`` is its last renewal)."""
        return Assignment.assigned_at > now - self.lease

    def _open(self, user_id: int, now: dt.datetime, gold: bool, unheld: bool = False) -> sa.Select:
        """The queue rows this labeler may be given now, in the order they are given (``ix_item_queue_next``);
        ``unheld``: only the regular items no other labeler holds."""
        query = sa.select(QueueEntry.item_id).where(
            QueueEntry.is_gold == gold, ~self._done(user_id, QueueEntry.item_id)
        )
        if not gold:
            held = (
                sa.select(sa.func.count())
                .where(Assignment.item_id == QueueEntry.item_id, Assignment.user_id != user_id, self._live(now))
                .scalar_subquery()
            )
            free = held == 0 if unheld else QueueEntry.n_rankings + held < self.config.overlap
            query = query.where(QueueEntry.n_rankings < self.config.overlap, free)
        return query.order_by(QueueEntry.n_rankings, QueueEntry.sort_key, QueueEntry.seq)

    def _in_hand(self, session: Session, user: User) -> Assignment | None:
        return session.scalars(sa.select(Assignment).where(Assignment.user_id == user.id)).one_or_none()

    def _n_done(self, session: Session, user_id: int) -> int:
        """Items the labeler ranked or skipped."""
        done = sa.union(
            sa.select(Ranking.item_id).where(Ranking.user_id == user_id),
            sa.select(Skip.item_id).where(Skip.user_id == user_id),
        ).subquery()
        return session.scalar(sa.select(sa.func.count()).select_from(done))

    def _choose(self, session: Session, user: User, own: Assignment | None, now: dt.datetime) -> str | None:
        """The item in hand again while it is still open for the labeler (a reload, a new login), else the next."""
        if own is not None:
            entry = session.get(QueueEntry, own.item_id)
            if entry is not None:
                mine = self._open(user.id, now, entry.is_gold).where(QueueEntry.item_id == own.item_id)
                if session.scalar(mine) is not None:
                    return own.item_id
        # Items nobody holds first, so labelers who start together spread over the items (and meet in different
        # pairs); then the ones others hold a slot of. Both scans stop at the first match.
        regular = session.scalar(self._open(user.id, now, gold=False, unheld=True).limit(1))
        if regular is None:
            regular = session.scalar(self._open(user.id, now, gold=False).limit(1))
        if regular is None:
            return None
        phase = assignment.gold_phase(user.username, self.config.seed)
        if assignment.is_gold_turn(self._n_done(session, user.id), self.config.gold_rate, phase):
            gold = session.scalar(self._open(user.id, now, gold=True).limit(1))
            if gold is not None:
                return gold
        return regular

    def next_item(self, username: str) -> ItemView | None:
        """The labeler's next item (the same one again until it is ranked or skipped); None when nothing is left."""
        return self.assign(username).view

    def assign(self, username: str) -> Assigned:
        """Hand the labeler their item in hand (with its draft), or the next one, with a fresh lease; and their
        progress.

        The item stays theirs (a reload or a new login gets it again, with its draft) until they rank or skip it, or
        until its lease ran out and other labelers filled its slots. Progress is read just after, in its own
        snapshot: on SQLite the write lock is then held only for the choice itself.
        """
        with self._begin() as session:
            view, draft = self._assign(session, username)
        return Assigned(view, *self._progress(username), draft)

    def _assign(self, session: Session, username: str) -> tuple[ItemView | None, dict[str, Any] | None]:
        """``assign``'s choice and lease, in the caller's transaction: the item's view and its draft."""
        now = utcnow()
        advisory_lock(session.connection(), "labeling_ui.assign")  # two labelers must not take one last slot
        user = self._labeler(session, username)
        own = self._in_hand(session, user)
        chosen = self._choose(session, user, own, now) if user.active else None
        if own is not None and own.item_id == chosen:
            own.assigned_at = now
        else:
            session.execute(sa.delete(Assignment).where(Assignment.user_id == user.id))
            session.execute(sa.delete(Draft).where(Draft.user_id == user.id))
            if chosen is not None:
                session.add(Assignment(item_id=chosen, user_id=user.id, assigned_at=now))
        item = None if chosen is None else session.get(Item, chosen)
        view = None if item is None else self._view(item, username)
        draft = None
        if own is not None and own.item_id == chosen:  # a new item's drafts were deleted above
            row = session.get(Draft, user.id)
            draft = _checked_draft(row.draft, item) if row is not None and row.item_id == chosen else None
        return view, draft

    def view_in_hand(self, username: str, item_id: str) -> ItemView | None:
        """The item as the labeler's page shows it, if it is still their item in hand (its lease is not touched)."""
        with self._read() as session:
            user = self._labeler(session, username)
            own = self._in_hand(session, user)
            if own is None or own.item_id != item_id:
                return None
            return self._view(session.get(Item, item_id), username)

    def renew_lease(self, username: str, item_id: str) -> bool:
        """The page still shows the item: hold it ``lease_seconds`` longer. False when it is not in hand (any more)."""
        with self._begin() as session:
            user = self._labeler(session, username)
            renewed = session.execute(
                sa.update(Assignment)
                .where(Assignment.user_id == user.id, Assignment.item_id == item_id)
                .values(assigned_at=utcnow())
            )
            return renewed.rowcount > 0

    def release_lease(self, username: str, item_id: str) -> None:
        """The page closed (or logged out): the item no longer counts as held, so others may be given it at once.

        It stays the labeler's item in hand, draft included, until someone else fills its slots: coming back soon
        gets it again."""
        with self._begin() as session:
            user = self._labeler(session, username)
            session.execute(
                sa.update(Assignment)
                .where(Assignment.user_id == user.id, Assignment.item_id == item_id)
                .values(assigned_at=utcnow() - self.lease)
            )

    def save_draft(self, username: str, item_id: str, draft: dict[str, Any]) -> bool:
        """Keep what the labeler entered so far for their item in hand ({ranks, flags, none_acceptable, comment}),
        so a reload, a new login or a restart of the app shows it again. False when the item is not in hand."""
        if len(json.dumps(draft)) > MAX_DRAFT:
            raise RankingError(f"This draft is over {MAX_DRAFT} characters: shorten the comment.")
        with self._begin() as session:
            user = self._labeler(session, username)
            own = self._in_hand(session, user)
            if own is None or own.item_id != item_id:
                return False
            values = {"user_id": user.id, "item_id": item_id, "draft": draft, "saved_at": utcnow()}
            self._upsert(session, Draft, "user_id", values)
        return True

    def draft(self, username: str, item_id: str) -> dict[str, Any] | None:
        """The labeler's saved draft of the item, checked on the way out: ranks 1..K, known flags, texts."""
        with self._read() as session:
            user = self._labeler(session, username)
            row = session.get(Draft, user.id)
            item = session.get(Item, item_id) if row is not None and row.item_id == item_id else None
            if item is None:
                return None
            return _checked_draft(row.draft, item)

    def progress(self, username: str) -> tuple[int, int]:
        """(items this labeler ranked, items they ranked plus those they will still be given)."""
        return self._progress(username)[:2]

    def _progress(self, username: str) -> tuple[int, int, int]:
        """(ranked, ranked + still to be given, open items held by others), from the labeler's own history, the
        live leases and the queue's counts: nothing here reads every item."""
        now = utcnow()
        regular, below = QueueEntry.is_gold == sa.false(), QueueEntry.n_rankings < self.config.overlap
        with self._read() as session:
            user = self._labeler(session, username)
            count = sa.select(sa.func.count())
            n_ranked = session.scalar(count.where(Ranking.user_id == user.id, Ranking.is_current))
            if not user.active:
                return n_ranked, n_ranked, 0
            done = sa.union(
                sa.select(Ranking.item_id).where(Ranking.user_id == user.id),
                sa.select(Skip.item_id).where(Skip.user_id == user.id),
            ).subquery()
            n_done, done_open, done_gold = session.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count().filter(regular & below),
                    sa.func.count().filter(QueueEntry.is_gold == sa.true()),
                ).select_from(done.join(QueueEntry, QueueEntry.item_id == done.c.item_id))
            ).one()
            # From the live leases of others (one per labeler at most) to their queue rows, by key only: given any
            # other condition on the queue, SQLite reads its index range instead (56 ms at 100k items, not 0.3 ms).
            holders = dict(
                session.execute(
                    sa.select(Assignment.item_id, sa.func.count())
                    .where(Assignment.user_id != user.id, self._live(now))
                    .group_by(Assignment.item_id)
                )
                .tuples()
                .all()
            )
            full = set()
            if holders:  # (an empty IN makes SQLite read the whole queue)
                entries = session.execute(
                    sa.select(QueueEntry.item_id, QueueEntry.is_gold, QueueEntry.n_rankings).where(
                        QueueEntry.item_id.in_(holders)
                    )
                ).tuples()
                full = {i for i, gold, n in entries if not gold and n < self.config.overlap <= n + holders[i]}
            if full:
                mine = sa.union(
                    sa.select(Ranking.item_id).where(Ranking.user_id == user.id, Ranking.item_id.in_(full)),
                    sa.select(Skip.item_id).where(Skip.user_id == user.id, Skip.item_id.in_(full)),
                )
                full -= set(session.scalars(mine))
            held = len(full)
            totals = dict(
                session.execute(
                    sa.select(QueueCount.is_gold, sa.func.sum(QueueCount.items))
                    .where(sa.or_(QueueCount.is_gold == sa.true(), QueueCount.n_rankings < self.config.overlap))
                    .group_by(QueueCount.is_gold)
                )
                .tuples()
                .all()
            )
            open_regular = int(totals.get(False) or 0) - done_open - held
            gold = int(totals.get(True) or 0)
        phase = assignment.gold_phase(username, self.config.seed)
        remaining = assignment.planned_remaining(n_done, open_regular, gold - done_gold, self.config.gold_rate, phase)
        return n_ranked, n_ranked + remaining, held
