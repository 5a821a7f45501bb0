"""The labeler's work, part one: the item in hand. Which item a labeler is handed, its lease, their draft of it, and
their progress."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from labeling_ui import assignment
from labeling_ui.db import Assignment, Draft, Item, LabelerCount, QueueCount, QueueEntry, Ranking, Skip, User, utcnow
from labeling_ui.rules import FLAGS, MAX_TEXT, RankingError
from labeling_ui.storage.base import DONE_BY, ITEM_STATE, ItemView, StoreBase

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


# The statements of assignment and progress, built once with their values as parameters (``user``, ``cutoff``: the
# start of the live leases, ``overlap``, ``item``): building a statement and its cache key costs SQLAlchemy more
# than SQLite takes to run it.
_USER_ID = sa.bindparam("user")
_CUTOFF = sa.bindparam("cutoff", type_=Assignment.assigned_at.type)
_OVERLAP = sa.bindparam("overlap")


def _open(gold: bool, unheld: bool = False) -> sa.Select:
    """The queue rows the labeler ``user`` may be given now, in the order they are given (``ix_item_queue_next``);
    ``unheld``: only the regular items no other labeler holds."""
    # Whether the labeler ranked or skipped the item: two index lookups ((item_id, user_id, ...) keys).
    done = sa.or_(
        sa.exists().where(Ranking.item_id == QueueEntry.item_id, Ranking.user_id == _USER_ID),
        sa.exists().where(Skip.item_id == QueueEntry.item_id, Skip.user_id == _USER_ID),
    )
    query = sa.select(QueueEntry.item_id).where(QueueEntry.is_gold == gold, ~done)
    if not gold:
        # Live leases (given or renewed since ``cutoff``) of the others.
        held = (
            sa.select(sa.func.count())
            .where(
                Assignment.item_id == QueueEntry.item_id,
                Assignment.user_id != _USER_ID,
                Assignment.assigned_at > _CUTOFF,
            )
            .scalar_subquery()
        )
        free = held == 0 if unheld else QueueEntry.n_rankings + held < _OVERLAP
        query = query.where(QueueEntry.n_rankings < _OVERLAP, free)
    return query.order_by(QueueEntry.n_rankings, QueueEntry.sort_key, QueueEntry.seq)


# The first open item: unheld regular, any regular, gold; and whether the item in hand (``item``) is still open.
_NEXT_UNHELD, _NEXT_REGULAR, _NEXT_GOLD = (
    _open(False, unheld=True).limit(1),
    _open(False).limit(1),
    _open(True).limit(1),
)
_STILL_OPEN = {gold: _open(gold).where(QueueEntry.item_id == sa.bindparam("item")) for gold in (False, True)}
_IN_HAND = sa.select(Assignment).where(Assignment.user_id == _USER_ID)
_DROP_LEASE = (
    sa.delete(Assignment)
    .where(Assignment.user_id == _USER_ID)
    .returning(Assignment.item_id, Assignment.counted)
    .execution_options(synchronize_session=False)
)
_DROP_DRAFT = sa.delete(Draft).where(Draft.user_id == _USER_ID).execution_options(synchronize_session=False)
_LEASE = sa.insert(Assignment).values(
    item_id=sa.bindparam("item"), user_id=_USER_ID, assigned_at=sa.bindparam("at"), counted=False
)
# A lease renewed (``at``: now) or released (``at``: a lease's length ago, so it no longer counts).
_SET_LEASE = (
    sa.update(Assignment)
    .where(Assignment.user_id == _USER_ID, Assignment.item_id == sa.bindparam("item"))
    .values(assigned_at=sa.bindparam("at"))
    .execution_options(synchronize_session=False)
)
_N_DONE = sa.select(sa.func.coalesce(sa.func.sum(LabelerCount.items), 0)).where(LabelerCount.user_id == _USER_ID)
_MY_COUNTS = sa.select(
    LabelerCount.is_gold, LabelerCount.n_rankings, LabelerCount.n_held, LabelerCount.ranked, LabelerCount.items
).where(LabelerCount.user_id == _USER_ID, LabelerCount.items != 0)
_QUEUE_COUNTS = sa.select(QueueCount.is_gold, QueueCount.n_rankings, QueueCount.n_held, QueueCount.items).where(
    QueueCount.items != 0
)
_OWN_LEASE = (
    sa.select(
        Assignment.item_id,
        QueueEntry.is_gold,
        QueueEntry.n_rankings,
        QueueEntry.n_held,
        (Assignment.assigned_at > _CUTOFF).label("live"),
    )
    .join(QueueEntry, QueueEntry.item_id == Assignment.item_id)
    .where(Assignment.user_id == _USER_ID)
)


class Assigning(StoreBase):
    def _in_hand(self, session: Session, user: User) -> Assignment | None:
        return session.scalars(_IN_HAND, {"user": user.id}).one_or_none()

    def _choose(self, session: Session, user: User, own: Assignment | None, now: dt.datetime) -> str | None:
        """The item in hand again while it is still open for the labeler (a reload, a new login), else the next."""
        values = {"user": user.id, "cutoff": now - self.lease, "overlap": self.config.overlap}
        if own is not None:
            entry = session.get(QueueEntry, own.item_id)
            if entry is not None:
                if session.scalar(_STILL_OPEN[entry.is_gold], values | {"item": own.item_id}) is not None:
                    return own.item_id
        # Items nobody holds first, so labelers who start together spread over the items (and meet in different
        # pairs); then the ones others hold a slot of. Both scans stop at the first match.
        regular = session.scalar(_NEXT_UNHELD, values)
        if regular is None:
            regular = session.scalar(_NEXT_REGULAR, values)
        if regular is None:
            return None
        phase = assignment.gold_phase(user.username, self.config.seed)
        if assignment.is_gold_turn(session.scalar(_N_DONE, values), self.config.gold_rate, phase):
            gold = session.scalar(_NEXT_GOLD, values)
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
        until its lease ran out and other labelers filled its slots. Progress is read from the counters in the same
        transaction: a few rows, consistent with the choice.
        """
        with self._begin() as session:
            return self._assign(session, username)

    def _assign(self, session: Session, username: str) -> Assigned:
        """``assign`` in the caller's transaction."""
        now = utcnow()
        self._counting(session)  # also: two labelers must not take one last slot
        user = self._labeler(session, username)
        own = self._in_hand(session, user)
        chosen = self._choose(session, user, own, now) if user.active else None
        kept = own is not None and own.item_id == chosen
        if kept:
            session.execute(_SET_LEASE, {"user": user.id, "item": chosen, "at": now})
        else:
            for item_id, counted in session.execute(_DROP_LEASE, {"user": user.id}).all():
                if counted:
                    self._change(session, item_id, held=-1)
            session.execute(_DROP_DRAFT, {"user": user.id})
            if chosen is not None:
                session.execute(_LEASE, {"item": chosen, "user": user.id, "at": now})
        item = None if chosen is None else session.get(Item, chosen)
        view = None if item is None else self._view(item, username)
        draft = None
        if kept:  # a new item's drafts were deleted above
            row = session.get(Draft, user.id)
            draft = _checked_draft(row.draft, item) if row is not None and row.item_id == chosen else None
        self._settle(session, now)
        return Assigned(view, *self._progress(session, user, now), draft)

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
            return session.execute(_SET_LEASE, {"user": user.id, "item": item_id, "at": utcnow()}).rowcount > 0

    def release_lease(self, username: str, item_id: str) -> None:
        """The page closed (or logged out): the item no longer counts as held, so others may be given it at once.

        It stays the labeler's item in hand, draft included, until someone else fills its slots: coming back soon
        gets it again."""
        with self._begin() as session:
            user = self._labeler(session, username)
            session.execute(_SET_LEASE, {"user": user.id, "item": item_id, "at": utcnow() - self.lease})

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
        with self._read() as session:
            return self._progress(session, self._labeler(session, username), utcnow())[:2]

    def _settle_read(
        self, session: Session, user: User, now: dt.datetime, mine: Counter, queue: Counter, own: Any
    ) -> int | None:
        """Move the counts read in ``mine`` and ``queue`` to where the leases out of date at ``now`` put them, in
        what was read only; returns the held count of the item in the labeler's own hand (None: no item)."""
        own_held = None if own is None else own.n_held
        changes: Counter = Counter()
        for item_id, _, counted in self._unsettled(session, now):
            changes[item_id] += -1 if counted else 1
        for item_id, change in changes.items():
            gold, n, held = session.execute(ITEM_STATE, {"item": item_id}).one()
            queue[gold, n, held] -= 1
            queue[gold, n, held + change] += 1
            for user_id, ranked in session.execute(DONE_BY, {"item": item_id}):
                if user_id == user.id:
                    mine[gold, n, held, ranked] -= 1
                    mine[gold, n, held + change, ranked] += 1
            if own is not None and own.item_id == item_id:
                own_held += change
        return own_held

    def _progress(self, session: Session, user: User, now: dt.datetime) -> tuple[int, int, int]:
        """(ranked, ranked + still to be given, open items held by others) at ``now``, from the counters: the
        labeler's done items and the queue, each by (is_gold, n_rankings, n_held), a few rows. Leases whose
        counting is out of date (usually none; none after ``_settle``) are settled here in what was read only, so
        a reader writes nothing and waits for no writer."""
        mine = Counter()
        for *key, items in session.execute(_MY_COUNTS, {"user": user.id}):
            mine[tuple(key)] += items
        n_ranked = sum(items for (*_, ranked), items in mine.items() if ranked)
        if not user.active:
            return n_ranked, n_ranked, 0
        queue = Counter()
        for *key, items in session.execute(_QUEUE_COUNTS):
            queue[tuple(key)] += items
        own = session.execute(_OWN_LEASE, {"user": user.id, "cutoff": now - self.lease}).one_or_none()
        own_held = self._settle_read(session, user, now, mine, queue, own)

        overlap = self.config.overlap

        def full(n: int, held: int) -> bool:  # a regular item with slots left, all of them held
            return n < overlap <= n + held

        n_done = sum(mine.values())
        done_gold = sum(items for (gold, *_), items in mine.items() if gold)
        done_open = sum(items for (gold, n, *_), items in mine.items() if not gold and n < overlap)
        done_full = sum(items for (gold, n, held, _), items in mine.items() if not gold and full(n, held))
        gold = sum(items for (is_gold, *_), items in queue.items() if is_gold)
        open_regular = sum(items for (is_gold, n, _), items in queue.items() if not is_gold and n < overlap)
        held = sum(items for (is_gold, n, n_held), items in queue.items() if not is_gold and full(n, n_held))
        # The labeler's own live lease is not one of the others': it may fill its item's last slot.
        if own is not None and own.live and not own.is_gold and full(own.n_rankings, own_held):
            held -= not full(own.n_rankings, own_held - 1)
        held -= done_full  # none of them the item in hand, which goes as it is done
        open_regular -= done_open + held
        phase = assignment.gold_phase(user.username, self.config.seed)
        remaining = assignment.planned_remaining(n_done, open_regular, gold - done_gold, self.config.gold_rate, phase)
        return n_ranked, n_ranked + remaining, held
