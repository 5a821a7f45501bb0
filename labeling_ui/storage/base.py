"""What every part of ``LabelStore`` stands on: the database and its transactions, the user lookup, the item as a
labeler sees it (``ItemView``), a ranking as the store hands it out, and the counters kept with the queue.

The counters: ``QueueCount`` counts the items by (is_gold, n_rankings, n_held) and ``LabelerCount`` each labeler's
done items by the same state, so a labeler's progress reads a few rows. Whatever changes an item's state moves its
counts in the same transaction (``_change``), under the one lock all counting transactions take on PostgreSQL
(``_counting``): every count moves by ``items = items + change``, and no two of them wait on each other crosswise.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from labeling_ui import assignment, timing
from labeling_ui.config import LabelingConfig
from labeling_ui.db import (
    READ_ONLY,
    Assignment,
    Item,
    LabelerCount,
    QueueCount,
    QueueEntry,
    Ranking,
    Skip,
    User,
    advisory_lock,
    make_engine,
    migrate,
)
from labeling_ui.rules import RankingError


@dataclass
class ItemView:
    """An item as one labeler sees it: candidates in this labeler's order; no gold flag, no model identity."""

    item_id: str
    prompt: str
    candidates: list[tuple[str, str]]  # (candidate_id, text)


# Built once: every request looks its user up (the role check, then the action, then the progress), and SQLAlchemy
# spends longer building a statement and its cache key than SQLite spends running it.
_USER = sa.select(User).where(User.username == sa.bindparam("username"))
_USER_LOCKED = _USER.with_for_update()

# An item's state moves by the given numbers of rankings and counted leases; the new state comes back.
_CHANGE = (
    sa.update(QueueEntry)
    .where(QueueEntry.item_id == sa.bindparam("item"))
    .values(
        n_rankings=QueueEntry.n_rankings + sa.bindparam("rankings"), n_held=QueueEntry.n_held + sa.bindparam("held")
    )
    .returning(QueueEntry.is_gold, QueueEntry.n_rankings, QueueEntry.n_held)
    .execution_options(synchronize_session=False)
)
ITEM_STATE = sa.select(QueueEntry.is_gold, QueueEntry.n_rankings, QueueEntry.n_held).where(
    QueueEntry.item_id == sa.bindparam("item")
)
# Who is done with an item (ranked = True: a current ranking; False: a skip), whose counts move with it.
DONE_BY = sa.union_all(
    sa.select(Ranking.user_id, sa.true().label("ranked")).where(
        Ranking.item_id == sa.bindparam("item"), Ranking.is_current
    ),
    sa.select(Skip.user_id, sa.false().label("ranked")).where(Skip.item_id == sa.bindparam("item")),
)
# The leases whose counting is out of date at ``now``: counted and run out, live and not counted. Two index ranges
# of ``ix_assignments_counted``, both usually empty.
_UNSETTLED = sa.union_all(
    sa.select(Assignment.item_id, Assignment.user_id, Assignment.counted).where(
        Assignment.counted, Assignment.assigned_at <= sa.bindparam("cutoff", type_=Assignment.assigned_at.type)
    ),
    sa.select(Assignment.item_id, Assignment.user_id, Assignment.counted).where(
        ~Assignment.counted, Assignment.assigned_at > sa.bindparam("cutoff", type_=Assignment.assigned_at.type)
    ),
)
_SET_COUNTED = (
    sa.update(Assignment)
    .where(Assignment.item_id == sa.bindparam("item"), Assignment.user_id == sa.bindparam("user"))
    .values(counted=sa.bindparam("counted"))
    .execution_options(synchronize_session=False)
)
COUNTS_LOCK = "labeling_ui.assign"  # also what keeps two labelers from taking one last slot


@dataclass(frozen=True)
class State:
    """An item's place in the counters."""

    is_gold: bool
    n_rankings: int
    n_held: int  # counted leases


def iso(value: dt.datetime) -> str:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat(timespec="seconds")


class StoreBase:
    """The database at ``url``, its schema brought up to date on opening, read and written in short transactions.

    ``config`` (default: ``LabelingConfig()``) says how items are handed out; it checked its values when it was built.
    """

    def __init__(self, url: str, config: LabelingConfig | None = None):
        self.url = url
        self.config = config if config is not None else LabelingConfig()
        self.lease = dt.timedelta(seconds=self.config.lease_seconds)
        migrate(url)
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        # SQLite has one write lock per file, and a writer that finds it taken polls with growing sleeps (up to
        # 100 ms each), so under many concurrent requests some wait for seconds. This process's writers queue on a
        # lock of their own instead and hand the database over without sleeping; other processes still wait on
        # SQLite's busy timeout. PostgreSQL locks rows, not the database: nothing to queue for there.
        self._writer = threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        # The dialect's upserts of the counters, built once: ``items = items + change`` for the row of a state.
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[self.engine.dialect.name]
        self._dialect = dialect
        queue = dialect.insert(QueueCount)
        self._count_queue = queue.on_conflict_do_update(
            index_elements=["is_gold", "n_rankings", "n_held"],
            set_={"items": QueueCount.items + queue.excluded["items"]},
        )
        labeler = dialect.insert(LabelerCount)
        self._count_labeler = labeler.on_conflict_do_update(
            index_elements=["user_id", "is_gold", "n_rankings", "n_held", "ranked"],
            set_={"items": LabelerCount.items + labeler.excluded["items"]},
        )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends (before the caller's method returns), else rolled
        back."""
        with timing.store_time(), self._writer, self._sessions.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """One transaction that only reads: a consistent snapshot that neither waits for writers nor blocks them."""
        with timing.store_time(), self._read_sessions.begin() as session:
            yield session

    def _upsert(self, session: Session, model: type, key: str, values: dict[str, Any]) -> None:
        """INSERT ... ON CONFLICT (key) DO UPDATE SET the other values, in this database's dialect."""
        insert = self._dialect.insert(model).values(**values)
        session.execute(
            insert.on_conflict_do_update(index_elements=[key], set_={k: v for k, v in values.items() if k != key})
        )

    @staticmethod
    def _find_user(session: Session, username: str, lock: bool = False) -> User | None:
        return session.scalars(_USER_LOCKED if lock else _USER, {"username": username}).one_or_none()

    def _labeler(self, session: Session, username: str, lock: bool = False) -> User:
        user = self._find_user(session, username, lock)
        if user is None:
            raise RankingError(f"Unknown user {username!r}. Log in again, or ask an admin to add you.")
        return user

    def _view(self, item: Item, username: str) -> ItemView:
        texts = {c["id"]: c["text"] for c in item.candidates}
        order = assignment.display_order(list(texts), username, item.id, self.config.seed)
        return ItemView(item_id=item.id, prompt=item.prompt, candidates=[(cid, texts[cid]) for cid in order])

    @staticmethod
    def _counting(session: Session) -> None:
        """Take the counters' lock (PostgreSQL; SQLite's writers are one at a time already) before changing them."""
        advisory_lock(session.connection(), COUNTS_LOCK)

    def _count(self, session: Session, state: State, change: int) -> None:
        """Add ``change`` items of ``state`` to the queue's counts."""
        row = {"is_gold": state.is_gold, "n_rankings": state.n_rankings, "n_held": state.n_held, "items": change}
        session.execute(self._count_queue, row)

    def _count_done(self, session: Session, user_id: int, state: State, ranked: bool, change: int = 1) -> None:
        """Add ``change`` to the labeler's done items of ``state``, ranked or skipped."""
        row = {"user_id": user_id, "ranked": ranked, "items": change}
        row |= {"is_gold": state.is_gold, "n_rankings": state.n_rankings, "n_held": state.n_held}
        session.execute(self._count_labeler, row)

    def _change(self, session: Session, item_id: str, rankings: int = 0, held: int = 0) -> State:
        """Move the item by ``rankings`` current rankings and ``held`` counted leases, and its counts with it: the
        queue's and those of every labeler done with it. Returns its state now."""
        if not rankings and not held:
            return State(*session.execute(ITEM_STATE, {"item": item_id}).one())
        after = State(*session.execute(_CHANGE, {"item": item_id, "rankings": rankings, "held": held}).one())
        before = State(after.is_gold, after.n_rankings - rankings, after.n_held - held)
        self._count(session, before, -1)
        self._count(session, after, 1)
        for user_id, ranked in session.execute(DONE_BY, {"item": item_id}):
            self._count_done(session, user_id, before, ranked, -1)
            self._count_done(session, user_id, after, ranked, 1)
        return after

    def _unsettled(self, session: Session, now: dt.datetime) -> list[tuple[str, int, bool]]:
        """(item, user, counted) of the leases whose counting is out of date at ``now``: one ran out or was released
        (its time set back), or was given or renewed since the counters were last settled."""
        return session.execute(_UNSETTLED, {"cutoff": now - self.lease}).tuples().all()

    def _settle(self, session: Session, now: dt.datetime) -> None:
        """Count the leases live at ``now``, and only them."""
        for item_id, user_id, counted in self._unsettled(session, now):
            session.execute(_SET_COUNTED, {"item": item_id, "user": user_id, "counted": not counted})
            self._change(session, item_id, held=-1 if counted else 1)

    @staticmethod
    def _ranking_dict(ranking: Ranking) -> dict[str, Any]:
        return {
            "ranking_id": ranking.id,
            "ranks": ranking.ranks,
            "version": ranking.version,
            "none_acceptable": ranking.none_acceptable,
            "flags": ranking.flags,
            "comment": ranking.comment,
            "guidelines_version": ranking.guidelines_version,
            "created_at": iso(ranking.created_at),
        }
