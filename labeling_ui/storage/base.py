"""What every part of ``LabelStore`` stands on: the database and its transactions, the user lookup, the item as a
labeler sees it (``ItemView``), a ranking as the store hands it out, and the queue's counts."""

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
from labeling_ui.db import READ_ONLY, Item, QueueCount, Ranking, User, make_engine, migrate
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

    @staticmethod
    def _insert_ignore(session: Session, model: type, conflict_columns: list[str] | None = None) -> sa.Insert:
        """INSERT ... ON CONFLICT [(columns)] DO NOTHING, in this database's dialect."""
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[session.get_bind().dialect.name]
        return dialect.insert(model).on_conflict_do_nothing(index_elements=conflict_columns)

    @staticmethod
    def _upsert(session: Session, model: type, key: str, values: dict[str, Any]) -> None:
        """INSERT ... ON CONFLICT (key) DO UPDATE SET the other values, in this database's dialect."""
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[session.get_bind().dialect.name]
        insert = dialect.insert(model).values(**values)
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

    def _count(self, session: Session, gold: bool, n_rankings: int, change: int) -> None:
        """Add ``change`` to the items of (gold, n_rankings) in ``item_queue_counts``."""
        if change:
            dialect = {"sqlite": sqlite, "postgresql": postgresql}[session.get_bind().dialect.name]
            insert = dialect.insert(QueueCount).values(is_gold=gold, n_rankings=n_rankings, items=change)
            update = {"items": QueueCount.items + change}
            session.execute(insert.on_conflict_do_update(index_elements=["is_gold", "n_rankings"], set_=update))

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
