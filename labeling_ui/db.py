"""The labeling database: SQLAlchemy models, engines tuned so that no submitted label is lost, and migrations.

SQLite (one file in the run directory) is the default; PostgreSQL is used through a ``postgresql://`` URL. The schema
is created and upgraded by alembic (``labeling_ui/migrations``), run from Python by ``migrate``: users never need the
alembic command. After changing a model, add a revision under ``migrations/versions`` (``alembic -c
labeling_ui/alembic.ini revision --autogenerate -m ...``); ``tests/test_labeling_store.py`` fails while the models and
the migrations disagree.
"""

from __future__ import annotations

import datetime as dt
import os
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, MetaData, String, Text, UniqueConstraint, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pipeline.lib import runs

MIGRATIONS = Path(__file__).parent / "migrations"
ROLES = ("labeler", "admin")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    # Named constraints: alembic's batch mode (how SQLite alters tables) can only drop or change a named constraint.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class User(Base):
    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("role IN ('labeler', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean)
    simulated: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Item(Base):
    """One prompt with K candidate responses. ``id`` is a hash of the content, so re-importing adds nothing."""

    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(unique=True)  # import order: the tie-break of the assignment
    prompt_id: Mapped[str] = mapped_column(String(255), index=True)
    prompt: Mapped[str] = mapped_column(Text)  # the last user message, as shown to labelers
    prompt_messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    candidates: Mapped[list[dict[str, str]]] = mapped_column(JSON)  # [{"id": hash of the text, "text": ...}]
    is_gold: Mapped[bool] = mapped_column(Boolean)
    gold_ranking: Mapped[dict[str, int] | None] = mapped_column(JSON)  # {candidate_id: rank}, gold items only
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # model, generation settings, time
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # Higher is handed out first among items with as many rankings (active selection: how much the last round's
    # reward-model ensemble disagrees about the item's order); 0 for items imported without one.
    priority: Mapped[float] = mapped_column(sa.Float, server_default=sa.text("0"))


class Ranking(Base):
    """One submitted ranking. Append-only: an edit adds a version and only ``is_current`` moves to it."""

    __tablename__ = "rankings"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id", "version"),
        # At most one current ranking per (item, labeler), enforced by the database itself.
        Index(
            "uq_rankings_current",
            "item_id",
            "user_id",
            unique=True,
            sqlite_where=sa.text("is_current"),
            postgresql_where=sa.text("is_current"),
        ),
        Index("ix_rankings_user_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[str] = mapped_column(String(128), unique=True)  # client-sent: a retried submit is a no-op
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    version: Mapped[int]
    is_current: Mapped[bool] = mapped_column(Boolean)
    ranks: Mapped[dict[str, int]] = mapped_column(JSON)  # {candidate_id: rank}, 1 = best, dense (1, 1, 2, ...)
    none_acceptable: Mapped[bool] = mapped_column(Boolean)
    flags: Mapped[dict[str, list[str]]] = mapped_column(JSON)  # {candidate_id: [flag, ...]}
    comment: Mapped[str] = mapped_column(Text)
    guidelines_version: Mapped[str] = mapped_column(String(64))
    display_order: Mapped[list[str]] = mapped_column(JSON)  # candidate ids as the labeler saw them
    seconds_spent: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Skip(Base):
    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[str] = mapped_column(String(128), unique=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Assignment(Base):
    """An item handed to a labeler by ``next_item``: a lease, so two labelers are not given the same last slot.

    Not a label: rows are replaced freely. A labeler holds one item at a time. The lease counts towards the item's
    overlap while the labeler's page renews it (``assigned_at`` is the last renewal); it ends on submit, skip, release or logout, and no
    longer counts once nobody renewed it for ``lease_seconds`` (``labeling_ui.assignment``).
    """

    __tablename__ = "assignments"

    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    assigned_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # Whether the queue's counters hold this lease (its item's ``n_held``). A lease runs out without a write, so
    # the counters follow the clock when they are read: ``StoreBase._settle`` counts the live leases, and only them.
    counted: Mapped[bool] = mapped_column(Boolean, server_default=sa.false())


# --- the work in hand (migration 0002): the item queue, drafts and reviews ------------------------------------------


class QueueEntry(Base):
    """One row per item: what ``assign`` scans, in the order of ``ix_item_queue_next`` (fewest rankings, then the
    highest priority, then import order), so finding a labeler's next item reads a few index entries however many
    items there are."""

    __tablename__ = "item_queue"
    __table_args__ = (Index("ix_item_queue_next", "is_gold", "n_rankings", "sort_key", "seq"),)

    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    is_gold: Mapped[bool] = mapped_column(Boolean)
    n_rankings: Mapped[int]  # labelers with a current ranking of the item
    # Minus the item's priority: an ascending key, so one index scan in one direction serves the whole order (a
    # descending column among ascending ones would make SQLite sort the queue on every assignment).
    sort_key: Mapped[float] = mapped_column(sa.Float, server_default=sa.text("0"))
    seq: Mapped[int]  # the item's import order
    n_held: Mapped[int] = mapped_column(server_default=sa.text("0"))  # its counted leases (``Assignment.counted``)


class QueueCount(Base):
    """How many items have each number of current rankings and of counted leases, gold and regular apart: kept
    with every change of an item's (n_rankings, n_held), so progress and the admin's overview read a few rows
    instead of counting 100k index entries (10 ms on SQLite) or every live lease on every call."""

    __tablename__ = "item_queue_counts"

    is_gold: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n_rankings: Mapped[int] = mapped_column(primary_key=True)
    n_held: Mapped[int] = mapped_column(primary_key=True)
    items: Mapped[int]


class LabelerCount(Base):
    """A labeler's done items (ranked, or skipped) by the items' state in the queue, as ``QueueCount`` counts the
    queue: moved with every change of a done item's (n_rankings, n_held), so a labeler's progress is a few rows,
    not a pass over their history and the others' leases."""

    __tablename__ = "labeler_counts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n_rankings: Mapped[int] = mapped_column(primary_key=True)
    n_held: Mapped[int] = mapped_column(primary_key=True)
    ranked: Mapped[bool] = mapped_column(Boolean, primary_key=True)  # False: skipped
    items: Mapped[int]


class Draft(Base):
    """A labeler's unfinished work on their item in hand: ranks, flags, "none acceptable" and comment, as the page
    last sent them. One per labeler; gone when they submit or skip the item, or are given another."""

    __tablename__ = "drafts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"))
    draft: Mapped[dict[str, Any]] = mapped_column(JSON)
    saved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Review(Base):
    """An admin's decision on a (flagged) item: left out of the export, and/or looked at."""

    __tablename__ = "item_reviews"

    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    excluded: Mapped[bool] = mapped_column(Boolean)
    reviewed: Mapped[bool] = mapped_column(Boolean)
    reviewed_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


# Lookups by labeler: a labeler's skips, and their one item in hand.
Index("ix_skips_user_id", Skip.user_id)
Index("uq_assignments_user_id", Assignment.user_id, unique=True)
# The leases whose counting is out of date: counted and run out, or live and not counted (both usually none).
Index("ix_assignments_counted", Assignment.counted, Assignment.assigned_at)


def default_db_path(run: str, runs_dir: str | Path = "runs") -> Path:
    """``<runs_dir>/<run>/labeling/labels.db``: the run's labels unless ``--db`` names another database."""
    return runs.stage_dir(run, "labeling", runs_dir) / "labels.db"


def default_db_url(run: str, runs_dir: str | Path = "runs") -> str:
    """``sqlite:///`` and ``default_db_path``, creating the folder."""
    path = default_db_path(run, runs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def shown_url(url: str) -> str:
    """``url`` with its password masked: for what is printed or written to summary.json."""
    return sa.make_url(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def create_private(path: Path) -> None:
    """Create the (empty) SQLite file ``path`` with mode 0600 unless it exists: labels and password hashes are for
    its owner only. SQLite gives the -wal and -shm files it creates the mode of the database file, so they are 0600
    too. An empty file is an empty database to SQLite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


READ_ONLY = "labeling_read_only"  # execution option: a transaction that only reads (see `_sqlite_begin`)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # isolation_level=None stops pysqlite from issuing its own deferred BEGIN; `_sqlite_begin` issues BEGIN IMMEDIATE,
    # which takes the write lock up front, so concurrent writers wait (busy_timeout) instead of failing with
    # "database is locked" when a deferred read transaction tries to upgrade to a write.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # A reader takes no lock: in WAL mode it reads a consistent snapshot while one writer works. Only transactions
    # marked READ_ONLY get the deferred BEGIN, so one that writes cannot hit a failed lock upgrade.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``: SQLite in WAL mode with full fsync, or PostgreSQL through psycopg 3."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if path := sqlite_file(url):
            create_private(path)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
    raise ValueError(f"Unsupported database URL {parsed.render_as_string()}: use sqlite:///PATH or postgresql://...")


def advisory_lock(connection: sa.Connection, name: str) -> None:
    """Serialise a critical section across PostgreSQL sessions until the transaction ends.

    SQLite needs nothing: every transaction there starts with BEGIN IMMEDIATE and so already holds the write lock.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(name.encode()))))


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (alembic upgrade head). Idempotent."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            advisory_lock(connection, "labeling_ui.migrate")  # two processes starting at once
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
