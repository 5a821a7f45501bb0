"""The labels' storage: ``LabelStore``, the one API the app, the CLI and the export use to read and write labels.

Every write is one short transaction, committed before the method returns: a label the app reported as saved is on
disk (SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Submits are idempotent on the client-sent
``submission_id`` (a retried request stores nothing twice), and rankings are append-only: an edit adds a version.
What a valid ranking is lives in ``labeling_ui.rules``; who gets which item, in ``labeling_ui.assignment``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labeling_ui import assignment
from labeling_ui.config import LabelingConfig
from labeling_ui.db import (
    READ_ONLY,
    ROLES,
    Assignment,
    Item,
    Ranking,
    Skip,
    User,
    advisory_lock,
    make_engine,
    migrate,
    utcnow,
)
from labeling_ui.rules import (
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
    prompt_messages,
    user_message,
)
from labeling_ui.users import check_username, dummy_hash, hash_password, verify_password


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
class Progress:
    """How far the labeling of a database is; gold items are left out of both counts."""

    items: int  # regular items imported
    rankings: int  # current rankings of them (an edit replaces a ranking, it does not add one)


def _iso(value: dt.datetime) -> str:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat(timespec="seconds")


class LabelStore:
    """Users, items, rankings and skips in one database (``url``); opening it migrates the schema.

    ``overlap``: labelers per regular item. ``gold_rate``: share of a labeler's items that are gold items.
    ``seed``: fixes display orders and where gold items fall for each labeler.
    """

    def __init__(self, url: str, overlap: int = 2, gold_rate: float = 0.1, seed: int = 0):
        if overlap < 1:
            raise ValueError(f"overlap must be at least 1 (labelers per item), got {overlap}.")
        if not 0 <= gold_rate < 1:
            raise ValueError(f"gold_rate must be in [0, 1) (a share of each labeler's items), got {gold_rate}.")
        self.url, self.overlap, self.gold_rate, self.seed = url, overlap, gold_rate, seed
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
        """The store as the app and the simulated labelers open it: the config's overlap, gold rate and seed."""
        return cls(url, overlap=config.overlap, gold_rate=config.gold_rate, seed=config.seed)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends (before the caller's method returns), else rolled
        back."""
        with self._writer, self._sessions.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """One transaction that only reads: a consistent snapshot that neither waits for writers nor blocks them."""
        with self._read_sessions.begin() as session:
            yield session

    @staticmethod
    def _insert_ignore(session: Session, model: type, conflict_columns: list[str] | None = None) -> sa.Insert:
        """INSERT ... ON CONFLICT [(columns)] DO NOTHING, in this database's dialect."""
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[session.get_bind().dialect.name]
        return dialect.insert(model).on_conflict_do_nothing(index_elements=conflict_columns)

    @staticmethod
    def _find_user(session: Session, username: str, lock: bool = False) -> User | None:
        query = sa.select(User).where(User.username == username)
        return session.scalars(query.with_for_update() if lock else query).one_or_none()

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

    def disable_user(self, username: str) -> None:
        """The user can no longer log in or get new items; what they submitted stays."""
        with self._begin() as session:
            user = self._find_user(session, username)
            if user is None:
                raise ValueError(f"No user {username!r}.")
            user.active = False

    def enable_user(self, username: str) -> None:
        """A disabled user can log in and get items again."""
        with self._begin() as session:
            user = self._find_user(session, username)
            if user is None:
                raise ValueError(f"No user {username!r}.")
            user.active = True

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

    @staticmethod
    def _new_items(rows: Iterable[dict], gold: bool) -> list[Item]:
        items = []
        for i, row in enumerate(rows, start=1):
            where = f"{'gold row' if gold else 'row'} {i} (prompt_id {row.get('prompt_id')!r})"
            messages, candidates = (
                prompt_messages(row.get("prompt"), where),
                candidate_list(row.get("candidates"), where),
            )
            ids = [c["id"] for c in candidates]
            ranking = gold_ranking(row.get("gold_ranking"), ids, where) if gold else None
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
                added += 1
        return added

    # --- the labeler's work -----------------------------------------------------------------------------------

    def _labeler_state(self, session: Session, user: User, now: dt.datetime) -> dict[str, Any]:
        """What the assignment rules need to know about one labeler, read in the caller's transaction."""
        ranked = set(session.scalars(sa.select(Ranking.item_id).where(Ranking.user_id == user.id)))
        skipped = set(session.scalars(sa.select(Skip.item_id).where(Skip.user_id == user.id)))
        rank_counts = dict(
            session.execute(
                sa.select(Ranking.item_id, sa.func.count()).where(Ranking.is_current).group_by(Ranking.item_id)
            )
            .tuples()
            .all()
        )
        lease = sa.alias(Assignment)
        done_by_holder = sa.or_(
            sa.exists().where(Ranking.item_id == lease.c.item_id, Ranking.user_id == lease.c.user_id),
            sa.exists().where(Skip.item_id == lease.c.item_id, Skip.user_id == lease.c.user_id),
        )
        active_leases = (
            sa.select(lease.c.item_id, lease.c.user_id)
            .where(lease.c.assigned_at >= now - assignment.LEASE)
            .where(~done_by_holder)
        )
        lease_counts: Counter[str] = Counter()
        own_open = []
        for item, holder in session.execute(active_leases).tuples():
            if holder == user.id:
                own_open.append(item)
            else:
                lease_counts[item] += 1
        items = session.execute(sa.select(Item.id, Item.is_gold).order_by(Item.seq)).tuples().all()
        done = ranked | skipped
        loads = [(i, rank_counts.get(i, 0) + lease_counts[i]) for i, gold in items if not gold and i not in done]
        return {
            "n_done": len(done),
            "n_ranked": len(ranked),
            "open_regular": [(i, load) for i, load in loads if load < self.overlap],
            "open_gold": [i for i, gold in items if gold and i not in done],
            "own_open": own_open,
        }

    def _choose(self, state: dict[str, Any], username: str) -> str | None:
        open_regular = dict(state["open_regular"])
        for item in state["own_open"]:  # the item handed out before and not ranked yet (e.g. the page was reloaded)
            if item in open_regular or item in state["open_gold"]:
                return item
        regular = assignment.pick_regular(state["open_regular"], self.overlap)
        if regular is None:
            return None
        phase = assignment.gold_phase(username, self.seed)
        if state["open_gold"] and assignment.is_gold_turn(state["n_done"], self.gold_rate, phase):
            return assignment.gold_order(state["open_gold"], username, self.seed)[0]
        return regular

    def next_item(self, username: str) -> ItemView | None:
        """The labeler's next item (the same one again until it is ranked or skipped); None when nothing is left."""
        return self.next_item_and_progress(username)[0]

    def next_item_and_progress(self, username: str) -> tuple[ItemView | None, tuple[int, int]]:
        """``next_item`` and ``progress`` read in one transaction (the API returns both on every call)."""
        now = utcnow()
        with self._begin() as session:
            advisory_lock(session.connection(), "labeling_ui.assign")  # two labelers must not take one last slot
            user = self._labeler(session, username)
            state = self._labeler_state(session, user, now)
            if not user.active:
                return None, (state["n_ranked"], state["n_ranked"])
            chosen = self._choose(state, username)
            session.execute(sa.delete(Assignment).where(Assignment.user_id == user.id))
            if chosen is None:
                return None, self._progress(state, username)
            session.add(Assignment(item_id=chosen, user_id=user.id, assigned_at=now))
            # The labeler's own lease does not count towards their progress: `state` is what `progress` reads now.
            return self._view(session.get(Item, chosen), username), self._progress(state, username)

    def submit_ranking(self, username: str, submission: Submission, guidelines_version: str = "") -> SubmitResult:
        """Store a ranking, committed before returning. The same submission_id again returns the stored row.

        A new submission_id for an item this labeler already ranked is an edit: a new version becomes current and
        the old row stays. Submissions of a user disabled meanwhile are still kept: no finished work is dropped.
        """
        submission_id, item_id = submission.submission_id, submission.item_id
        check_submission_id(submission_id)
        with self._begin() as session:
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
            where = (Ranking.item_id == item_id) & (Ranking.user_id == user.id)
            version = (session.scalar(sa.select(sa.func.max(Ranking.version)).where(where)) or 0) + 1
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
            return SubmitResult(ranking_id=inserted, version=version, created=True)

    def skip(self, username: str, submission_id: str, item_id: str, reason: str) -> None:
        """The labeler passes on the item: it is not offered to them again and goes to others. Idempotent."""
        check_submission_id(submission_id)
        check_text(reason, "reason")
        with self._begin() as session:
            user = self._labeler(session, username)
            stored = session.scalars(sa.select(Skip).where(Skip.submission_id == submission_id)).one_or_none()
            if stored is not None and (stored.user_id, stored.item_id) != (user.id, item_id):
                raise RankingError(f"This submission id was already used for another item. {RELOAD}")
            if session.get(Item, item_id) is None:
                raise RankingError(f"This item does not exist (any more). {RELOAD}")
            # Conflicts on submission_id (a retry) or on (item, user) (skipped before) both leave the first row.
            session.execute(
                self._insert_ignore(session, Skip).values(
                    submission_id=submission_id, item_id=item_id, user_id=user.id, reason=reason, created_at=utcnow()
                )
            )

    def progress(self, username: str) -> tuple[int, int]:
        """(items this labeler ranked, items they ranked plus those they will still be given)."""
        with self._read() as session:
            user = self._labeler(session, username)
            state = self._labeler_state(session, user, utcnow())
        if not user.active:
            return state["n_ranked"], state["n_ranked"]
        return self._progress(state, username)

    def _progress(self, state: dict[str, Any], username: str) -> tuple[int, int]:
        phase = assignment.gold_phase(username, self.seed)
        remaining = assignment.planned_remaining(
            state["n_done"], len(state["open_regular"]), len(state["open_gold"]), self.gold_rate, phase
        )
        return state["n_ranked"], state["n_ranked"] + remaining

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

        ``ranks_list`` holds the ranks aligned with ``candidates`` (the stored order, not the display order).
        """
        query = (
            sa.select(Ranking, Item, User)
            .join(Item, Item.id == Ranking.item_id)
            .join(User, User.id == Ranking.user_id)
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
            }
            for ranking, item, user in rows
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
