"""The labels' storage: ``LabelStore``, the one API the app, the CLI and the export use to read and write labels.

Every write is one short transaction, committed before the method returns: a label the app reported as saved is on
disk (SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Submits are idempotent on the client-sent
``submission_id`` (a retried request stores nothing twice), and rankings are append-only: an edit adds a version.
A new ranking or a skip is accepted only for the labeler's item in hand, and an edit names the version it replaces,
so a stale page is refused instead of overwriting anything. What a valid ranking is lives in ``labeling_ui.rules``;
who gets which item, in ``labeling_ui.assignment``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labeling_ui import assignment, timing
from labeling_ui.config import LEASE_SECONDS, PAGE_SLOTS, LabelingConfig
from labeling_ui.db import (
    READ_ONLY,
    ROLES,
    Assignment,
    Draft,
    Item,
    QueueCount,
    QueueEntry,
    Ranking,
    Review,
    Skip,
    User,
    advisory_lock,
    make_engine,
    migrate,
    utcnow,
)
from labeling_ui.rules import (
    FLAGS,
    MAX_TEXT,
    RELOAD,
    RankingError,
    Submission,
    candidate_list,
    check_display_order,
    check_seconds,
    check_submission_id,
    check_text,
    gold_ranking,
    item_id,
    normalize_flags,
    normalize_ranks,
)
from labeling_ui.users import check_username, dummy_hash, hash_password, verify_password
from pipeline.lib.prompts import prompt_messages, user_message


class StaleForm(RankingError):
    """Refused because the page that sent it is out of date: the item is ranked already or not in hand (any more)."""


MAX_DRAFT = 2 * MAX_TEXT  # characters of a draft's JSON: a comment of MAX_TEXT and the ranks and flags of 8 replies
ALREADY_RANKED = (
    "You already ranked this item (in another tab or window?): this page was out of date and nothing was saved. "
    "To change that ranking, open it from the My rankings tab."
)
NOT_IN_HAND = (
    "This is not the item you hold now (the page is out of date, or it was closed so long that the item went to "
    "others): nothing was saved. Reload the page (API: call /next_item) to get your current item."
)


@dataclass
class ItemView:
    """An item as one labeler sees it: candidates in this labeler's order; no gold flag, no model identity."""

    item_id: str
    prompt: str
    candidates: list[tuple[str, str]]  # (candidate_id, text)


@dataclass
class SubmitResult:
    ranking_id: int
    version: int
    created: bool  # False when this submission_id was already stored (a retry): nothing new was written


@dataclass
class Assigned:
    """What ``LabelStore.assign`` hands a labeler: their item in hand (None: nothing for them now) and progress."""

    view: ItemView | None
    done: int  # items they ranked
    total: int  # items they ranked plus those they will still be given
    held_by_others: int  # items they could still do that other labelers hold now (None view: the last ones)
    draft: dict[str, Any] | None = None  # their saved draft of the item (``LabelStore.draft``), read with it


@dataclass
class Progress:
    """How far the labeling of a database is; gold items are left out of both counts."""

    items: int  # regular items imported
    rankings: int  # current rankings of them (an edit replaces a ranking, it does not add one)


# Built once: every request looks its user up (the role check, then the action, then the progress), and SQLAlchemy
# spends longer building a statement and its cache key than SQLite spends running it.
_USER = sa.select(User).where(User.username == sa.bindparam("username"))
_USER_LOCKED = _USER.with_for_update()


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


def _iso(value: dt.datetime) -> str:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat(timespec="seconds")


class LabelStore:
    """Users, items, rankings and skips in one database (``url``); opening it migrates the schema.

    ``overlap``: labelers per regular item. ``gold_rate``: share of a labeler's items that are gold items.
    ``seed``: fixes display orders and where gold items fall for each labeler. ``lease_seconds``: how long an item
    stays held for a labeler whose page stopped renewing it. ``max_candidates``: most responses an imported item
    may have (what the page can show).
    """

    def __init__(
        self,
        url: str,
        overlap: int = 2,
        gold_rate: float = 0.1,
        seed: int = 0,
        lease_seconds: float = LEASE_SECONDS,
        max_candidates: int = PAGE_SLOTS,
    ):
        if overlap < 1:
            raise ValueError(f"overlap must be at least 1 (labelers per item), got {overlap}.")
        if not 0 <= gold_rate < 1:
            raise ValueError(f"gold_rate must be in [0, 1) (a share of each labeler's items), got {gold_rate}.")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}.")
        self.url, self.overlap, self.gold_rate, self.seed = url, overlap, gold_rate, seed
        self.lease, self.max_candidates = dt.timedelta(seconds=lease_seconds), max_candidates
        migrate(url)
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        # SQLite has one write lock per file, and a writer that finds it taken polls with growing sleeps (up to
        # 100 ms each), so under many concurrent requests some wait for seconds. This process's writers queue on a
        # lock of their own instead and hand the database over without sleeping; other processes still wait on
        # SQLite's busy timeout. PostgreSQL locks rows, not the database: nothing to queue for there.
        self._writer = threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()

    @classmethod
    def for_config(cls, url: str, config: LabelingConfig) -> LabelStore:
        """The store as the app and the simulated labelers open it: the config's overlap, gold rate, seed, lease and
        largest item."""
        return cls(
            url,
            overlap=config.overlap,
            gold_rate=config.gold_rate,
            seed=config.seed,
            lease_seconds=config.lease_seconds,
            max_candidates=config.max_candidates,
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
        order = assignment.display_order(list(texts), username, item.id, self.seed)
        return ItemView(item_id=item.id, prompt=item.prompt, candidates=[(cid, texts[cid]) for cid in order])

    # --- users ------------------------------------------------------------------------------------------------

    def add_user(self, username: str, password: str, role: str = "labeler", simulated: bool = False) -> None:
        check_username(username)
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}: use one of {', '.join(ROLES)}.")
        if not isinstance(password, str) or not password:
            raise ValueError("The password must not be empty.")
        user = User(
            username=username,
            password_hash=hash_password(password),
            role=role,
            active=True,
            simulated=simulated,
            created_at=utcnow(),
        )
        try:
            with self._begin() as session:
                if self._find_user(session, username) is not None:
                    raise ValueError(f"User {username!r} already exists.")
                session.add(user)
        except IntegrityError as error:  # added by someone else between the check and the insert
            raise ValueError(f"User {username!r} already exists.") from error

    def verify_user(self, username: str, password: str) -> bool:
        with self._read() as session:
            user = self._find_user(session, username)
            encoded = user.password_hash if user is not None and user.active else None
        if encoded is None:
            verify_password(password, dummy_hash())
            return False
        return verify_password(password, encoded)

    def set_active(self, username: str, active: bool) -> None:
        """Disable (False) or enable again (True): a disabled user can no longer log in or get new items; what they
        submitted stays."""
        with self._begin() as session:
            user = self._find_user(session, username)
            if user is None:
                raise ValueError(f"No user {username!r}.")
            user.active = active

    def reset_password(self, username: str, password: str) -> None:
        """Replace the user's password; the old one no longer works and their open sessions end (see session_key)."""
        if not isinstance(password, str) or not password:
            raise ValueError("The password must not be empty.")
        password_hash = hash_password(password)  # ~50 ms, outside the write transaction
        with self._begin() as session:
            user = self._find_user(session, username)
            if user is None:
                raise ValueError(f"No user {username!r}.")
            user.password_hash = password_hash

    def session_key(self, username: str) -> str | None:
        """What a session token of the user is signed with: their password hash, so a reset ends their sessions;
        None for an unknown or disabled user (no session of theirs is valid)."""
        with self._read() as session:
            user = self._find_user(session, username)
            return user.password_hash if user is not None and user.active else None

    def role(self, username: str) -> str | None:
        """'labeler' or 'admin'; None for an unknown or disabled user."""
        with self._read() as session:
            user = self._find_user(session, username)
            return user.role if user is not None and user.active else None

    def list_users(self) -> list[dict]:
        """Every user by name, with their current rankings and their skips."""
        with self._read() as session:
            rankings = self._counts_by_user(session, sa.select(Ranking.user_id).where(Ranking.is_current))
            skips = self._counts_by_user(session, sa.select(Skip.user_id))
            users = session.scalars(sa.select(User).order_by(User.username)).all()
        return [
            {
                "username": u.username,
                "role": u.role,
                "active": u.active,
                "simulated": u.simulated,
                "created_at": _iso(u.created_at),
                "n_rankings": rankings.get(u.id, 0),
                "n_skips": skips.get(u.id, 0),
            }
            for u in users
        ]

    @staticmethod
    def _counts_by_user(session: Session, user_ids: sa.Select) -> dict[int, int]:
        """{user id: rows} of a query that selects one user id per row."""
        query = user_ids.subquery()
        counted = sa.select(query.c.user_id, sa.func.count()).group_by(query.c.user_id)
        return dict(session.execute(counted).tuples().all())

    # --- items ------------------------------------------------------------------------------------------------

    def import_candidates(self, rows: Iterable[dict]) -> int:
        """Add the candidate generator's items; returns how many were new (re-importing the same rows adds 0)."""
        return self._add_items(self._new_items(rows, gold=False))

    def add_gold_items(self, rows: Iterable[dict]) -> int:
        """Add gold items: ``gold_ranking`` holds the reference ranks aligned with ``candidates`` (1 = best)."""
        return self._add_items(self._new_items(rows, gold=True))

    def _new_items(self, rows: Iterable[dict], gold: bool) -> list[Item]:
        """The rows as items; a row the page could not show (more than ``max_candidates`` responses) is refused,
        so no labeler is ever handed an item they can only look at."""
        items = []
        for i, row in enumerate(rows, start=1):
            where = f"{'gold row' if gold else 'row'} {i} (prompt_id {row.get('prompt_id')!r})"
            messages, candidates = (
                prompt_messages(row.get("prompt"), where),
                candidate_list(row.get("candidates"), where),
            )
            if len(candidates) > self.max_candidates:
                raise ValueError(
                    f"{where}: {len(candidates)} candidates, but the labeling page shows at most "
                    f"{self.max_candidates} (max_candidates in configs/labeling.yaml, up to {PAGE_SLOTS}): keep the "
                    f"best {self.max_candidates} of them, or sample fewer (candidates' k). Nothing was imported."
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
            for gold in (False, True):
                self._count(session, gold, 0, sum(item.is_gold == gold for item in new))
        return added

    def _count(self, session: Session, gold: bool, n_rankings: int, change: int) -> None:
        """Add ``change`` to the items of (gold, n_rankings) in ``item_queue_counts``."""
        if change:
            dialect = {"sqlite": sqlite, "postgresql": postgresql}[session.get_bind().dialect.name]
            insert = dialect.insert(QueueCount).values(is_gold=gold, n_rankings=n_rankings, items=change)
            update = {"items": QueueCount.items + change}
            session.execute(insert.on_conflict_do_update(index_elements=["is_gold", "n_rankings"], set_=update))

    # --- the labeler's work -----------------------------------------------------------------------------------

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
            free = held == 0 if unheld else QueueEntry.n_rankings + held < self.overlap
            query = query.where(QueueEntry.n_rankings < self.overlap, free)
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
        phase = assignment.gold_phase(user.username, self.seed)
        if assignment.is_gold_turn(self._n_done(session, user.id), self.gold_rate, phase):
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

    def submit_ranking(
        self, username: str, submission: Submission, guidelines_version: str = "", edits: int | None = None
    ) -> SubmitResult:
        """Store a ranking, committed before returning. The same submission_id again returns the stored row.

        Without ``edits`` it is the labeler's first ranking of their item in hand; a page that is out of date (the
        item is ranked already, or not in hand) is refused with what to do. ``edits`` = N changes their current
        ranking, version N (the My rankings tab): a new version N + 1 becomes current and the old row stays.
        Submissions of a user disabled meanwhile are still kept: no finished work is dropped.
        """
        check_submission_id(submission.submission_id)
        with self._begin() as session:
            return self._submit(session, username, submission, guidelines_version, edits)

    def submit_and_assign(
        self, username: str, submission: Submission, guidelines_version: str = "", edits: int | None = None
    ) -> tuple[SubmitResult, Assigned]:
        """``submit_ranking``, then ``assign`` the labeler's next item, in one transaction: one commit (one fsync)
        for a Submit and the item that follows it. Both are stored, or neither (a refused ranking, a database that
        stops answering): the ranking is acknowledged only once it is committed."""
        check_submission_id(submission.submission_id)
        with self._begin() as session:
            result = self._submit(session, username, submission, guidelines_version, edits)
            view, draft = self._assign(session, username)
        return result, Assigned(view, *self._progress(username), draft)

    def _submit(
        self, session: Session, username: str, submission: Submission, guidelines_version: str, edits: int | None
    ) -> SubmitResult:
        """``submit_ranking`` in the caller's transaction."""
        submission_id, item_id = submission.submission_id, submission.item_id
        # Locking the user row serialises one labeler's submits on PostgreSQL (a double click sends two):
        # versions are then numbered without gaps or clashes. SQLite's BEGIN IMMEDIATE already serialises.
        user = self._labeler(session, username, lock=True)
        stored = session.scalars(sa.select(Ranking).where(Ranking.submission_id == submission_id)).one_or_none()
        if stored is not None:
            if (stored.user_id, stored.item_id) != (user.id, item_id):
                raise RankingError(f"This submission id was already used for another item. {RELOAD}")
            return SubmitResult(ranking_id=stored.id, version=stored.version, created=False)
        item = session.get(Item, item_id)
        if item is None:
            raise RankingError(f"This item does not exist (any more). {RELOAD}")
        where = (Ranking.item_id == item_id) & (Ranking.user_id == user.id)
        current = session.scalar(sa.select(Ranking.version).where(where & Ranking.is_current))
        if edits is None:
            own = self._in_hand(session, user)
            if current is not None:
                raise StaleForm(ALREADY_RANKED)
            if own is None or own.item_id != item_id:
                raise StaleForm(NOT_IN_HAND)
        elif current is None:
            raise RankingError(f"You have no ranking of this item to edit. {RELOAD}")
        elif current != edits:
            raise StaleForm(
                f"Your ranking of this item changed since you opened it (version {edits}, now version {current}), "
                "perhaps in another tab: nothing was saved. Open it again from My rankings."
            )
        ids = [c["id"] for c in item.candidates]
        shown = submission.display_order
        row = {
            "ranks": normalize_ranks(submission.ranks, ids),
            "flags": normalize_flags(submission.flags, ids),
            "none_acceptable": bool(submission.none_acceptable),
            "comment": check_text(submission.comment, "comment"),
            "guidelines_version": check_text(guidelines_version, "guidelines version", 64),
            "display_order": (
                assignment.display_order(ids, username, item_id, self.seed)
                if shown is None
                else check_display_order(shown, ids)
            ),
            "seconds_spent": check_seconds(submission.seconds_spent),
        }
        version = (current or 0) + 1
        # Inserted as not current first: if a concurrent retry stored this submission_id after our check, the
        # insert does nothing and this transaction has changed nothing, so that stored row is the answer.
        inserted = session.execute(
            self._insert_ignore(session, Ranking, ["submission_id"])
            .values(
                submission_id=submission_id,
                item_id=item_id,
                user_id=user.id,
                version=version,
                is_current=False,
                created_at=utcnow(),
                **row,
            )
            .returning(Ranking.id)
        ).scalar_one_or_none()
        if inserted is None:
            stored = session.scalars(sa.select(Ranking).where(Ranking.submission_id == submission_id)).one()
            return SubmitResult(ranking_id=stored.id, version=stored.version, created=False)
        session.execute(sa.update(Ranking).where(where & Ranking.is_current).values(is_current=False))
        session.execute(sa.update(Ranking).where(Ranking.id == inserted).values(is_current=True))
        if version == 1:  # one more labeler ranked it; their hands are free for the next item
            entry = sa.update(QueueEntry).where(QueueEntry.item_id == item_id)
            entry = entry.values(n_rankings=QueueEntry.n_rankings + 1).returning(QueueEntry.n_rankings)
            n_rankings = session.execute(entry).scalar_one()
            # The lower count first, in every transaction: two submits never wait on each other crosswise.
            self._count(session, item.is_gold, n_rankings - 1, -1)
            self._count(session, item.is_gold, n_rankings, 1)
            self._let_go(session, user, item_id)
        return SubmitResult(ranking_id=inserted, version=version, created=True)

    @staticmethod
    def _let_go(session: Session, user: User, item_id: str) -> None:
        """The item is done with: its lease and draft go (only its own: a new item handed out meanwhile stays)."""
        session.execute(sa.delete(Assignment).where(Assignment.user_id == user.id, Assignment.item_id == item_id))
        session.execute(sa.delete(Draft).where(Draft.user_id == user.id, Draft.item_id == item_id))

    def skip(self, username: str, submission_id: str, item_id: str, reason: str) -> None:
        """The labeler passes on their item in hand: it is not offered to them again and goes to others. Idempotent;
        refused for an item they ranked already or do not hold (a page out of date)."""
        check_submission_id(submission_id)
        check_text(reason, "reason")
        with self._begin() as session:
            user = self._labeler(session, username)
            stored = session.scalars(sa.select(Skip).where(Skip.submission_id == submission_id)).one_or_none()
            if stored is not None:
                if (stored.user_id, stored.item_id) != (user.id, item_id):
                    raise RankingError(f"This submission id was already used for another item. {RELOAD}")
                return  # a retry
            if session.get(Item, item_id) is None:
                raise RankingError(f"This item does not exist (any more). {RELOAD}")
            if session.scalar(sa.select(Skip.id).where(Skip.item_id == item_id, Skip.user_id == user.id)):
                return  # skipped before, from another tab
            if session.scalar(sa.select(Ranking.id).where(Ranking.item_id == item_id, Ranking.user_id == user.id)):
                raise StaleForm(ALREADY_RANKED.replace("nothing was saved", "it cannot be skipped now"))
            own = self._in_hand(session, user)
            if own is None or own.item_id != item_id:
                raise StaleForm(NOT_IN_HAND)
            session.add(
                Skip(submission_id=submission_id, item_id=item_id, user_id=user.id, reason=reason, created_at=utcnow())
            )
            self._let_go(session, user, item_id)

    def progress(self, username: str) -> tuple[int, int]:
        """(items this labeler ranked, items they ranked plus those they will still be given)."""
        return self._progress(username)[:2]

    def _progress(self, username: str) -> tuple[int, int, int]:
        """(ranked, ranked + still to be given, open items held by others), from the labeler's own history, the
        live leases and the queue's counts: nothing here reads every item."""
        now = utcnow()
        regular, below = QueueEntry.is_gold == sa.false(), QueueEntry.n_rankings < self.overlap
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
                full = {i for i, gold, n in entries if not gold and n < self.overlap <= n + holders[i]}
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
                    .where(sa.or_(QueueCount.is_gold == sa.true(), QueueCount.n_rankings < self.overlap))
                    .group_by(QueueCount.is_gold)
                )
                .tuples()
                .all()
            )
            open_regular = int(totals.get(False) or 0) - done_open - held
            gold = int(totals.get(True) or 0)
        phase = assignment.gold_phase(username, self.seed)
        remaining = assignment.planned_remaining(n_done, open_regular, gold - done_gold, self.gold_rate, phase)
        return n_ranked, n_ranked + remaining, held

    @staticmethod
    def _current_of(user: User) -> sa.Select:
        return (
            sa.select(Ranking, Item)
            .join(Item, Item.id == Ranking.item_id)
            .where(Ranking.user_id == user.id, Ranking.is_current)
        )

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
            "created_at": _iso(ranking.created_at),
        }

    def recent_submissions(self, username: str, limit: int = 10) -> list[dict]:
        """The labeler's current rankings, most recently submitted or edited first."""
        with self._read() as session:
            user = self._labeler(session, username)
            query = self._current_of(user).order_by(Ranking.created_at.desc(), Ranking.id.desc())
            rows = session.execute(query.limit(limit)).tuples().all()
        return [{"item_id": item.id, "prompt": item.prompt, **self._ranking_dict(r)} for r, item in rows]

    def item_for_edit(self, username: str, item_id: str) -> tuple[ItemView, dict] | None:
        """The item in this labeler's display order and their current ranking of it; None if they have none."""
        with self._read() as session:
            user = self._labeler(session, username)
            row = session.execute(self._current_of(user).where(Item.id == item_id)).tuples().one_or_none()
        if row is None:
            return None
        ranking, item = row
        return self._view(item, username), self._ranking_dict(ranking)

    # --- everyone's labels ------------------------------------------------------------------------------------

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

    # --- what admins see and decide ---------------------------------------------------------------------------

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
        query = sa.select(QueueCount.n_rankings, QueueCount.items).where(
            QueueCount.is_gold == sa.false(), QueueCount.items > 0
        )
        with self._read() as session:
            return dict(sorted(session.execute(query).tuples().all()))

    def import_batches(self) -> list[dict[str, Any]]:
        """Per import of regular items (the pipeline imports once per round), oldest first: when, how many items,
        their current rankings, and how many have ``overlap`` of them."""
        full = sa.func.count().filter(QueueEntry.n_rankings >= self.overlap)
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
            {"imported_at": _iso(at), "items": items, "rankings": int(rankings or 0), "complete": complete}
            for at, items, rankings, complete in rows
        ]
