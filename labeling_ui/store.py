"""The labeling store: the one API the app, the CLI and the export use to read and write labels.

Every write is one short transaction, committed before the method returns: a label the app reported as saved is on
disk (SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Submits are idempotent on the client-sent
``submission_id`` (a retried request stores nothing twice), and rankings are append-only: an edit adds a version.

Rank convention: 1 = best; tied candidates share a rank; ranks are stored DENSE (1, 1, 2: no gaps). The competition
form of the same ranking (1, 1, 3) is accepted too and stored dense.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import statistics
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labeling_ui import assignment
from labeling_ui.agreement import agreement_summary, competition_ranks, dense_ranks, pairwise_agreement
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
from labeling_ui.users import check_username, dummy_hash, hash_password, verify_password

FLAGS = ("unsafe", "private_data", "factually_wrong", "off_topic")
MAX_TEXT = 5000  # characters of a comment or skip reason
MAX_SUBMISSION_ID = 128
RELOAD = "Reload the page and try again."


class RankingError(ValueError):
    """A submission the store refuses. The message is shown to the labeler as is: what is wrong, what to do."""


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


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------


def _hash(*parts: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:length]


def candidate_id(text: str) -> str:
    return _hash("candidate", text, length=12)


def item_id(prompt_messages: list[dict], texts: Sequence[str], is_gold: bool) -> str:
    """A hash of the content (candidate order ignored): the same prompt and candidates always give the same id."""
    return _hash("gold" if is_gold else "item", prompt_messages, sorted(texts), length=32)


def user_message(messages: Sequence[Mapping[str, str]]) -> str:
    """The text labelers read as the prompt: the last user message (the last message if none is a user's)."""
    users = [m for m in messages if m.get("role") == "user"]
    return str((users or list(messages))[-1]["content"])


def _as_rank(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def normalize_ranks(ranks: Mapping[str, object], candidate_ids: Sequence[str]) -> dict[str, int]:
    """Check a labeler's ranks and return them dense, keyed by candidate id; RankingError says what to fix.

    Accepted: every candidate ranked with a whole number in 1..K, ties allowed, either with no gaps (1, 1, 2) or
    skipping the tied places (1, 1, 3). Both forms say the same thing and are stored as the first.
    """
    k = len(candidate_ids)
    if set(ranks) - set(candidate_ids):
        raise RankingError(f"This form is out of date: it ranks a response this item does not have. {RELOAD}")
    given = {cid: ranks[cid] for cid in candidate_ids if ranks.get(cid) not in (None, "")}
    missing = k - len(given)
    if missing:
        raise RankingError(f"Rank every response: {missing} of {k} have no rank yet.")
    parsed = {cid: _as_rank(value) for cid, value in given.items()}
    if any(value is None for value in parsed.values()):
        raise RankingError(f"Ranks must be whole numbers from 1 (best) to {k}.")
    values = [parsed[cid] for cid in candidate_ids]
    out_of_range = sorted({v for v in values if not 1 <= v <= k})
    if out_of_range:
        raise RankingError(f"Ranks go from 1 (best) to {k}; {out_of_range[0]} is out of range.")
    if min(values) != 1:
        raise RankingError(f"The best response gets rank 1; these ranks start at {min(values)}.")
    if values != dense_ranks(values) and values != competition_ranks(values):
        shown = ", ".join(map(str, sorted(values)))
        raise RankingError(
            f"The ranks {shown} leave a gap. Tied responses share a rank and the next one follows on "
            "(1, 1, 2, ...) or skips the tied places (1, 1, 3, ...). Fix the ranks and submit again."
        )
    return dict(zip(candidate_ids, dense_ranks(values), strict=True))


def normalize_flags(flags: Mapping[str, Iterable[str] | str] | None, candidate_ids: Sequence[str]) -> dict[str, list]:
    """Flags keyed by candidate id, each a sorted list of known flags; candidates without flags are left out."""
    out = {}
    for cid, names in (flags or {}).items():
        if cid not in candidate_ids:
            raise RankingError(f"This form is out of date: it flags a response this item does not have. {RELOAD}")
        names = [names] if isinstance(names, str) else list(names)
        unknown = sorted(set(names) - set(FLAGS))
        if unknown:
            raise RankingError(f"Unknown flag {unknown[0]!r}. The flags are: {', '.join(FLAGS)}.")
        if names:
            out[cid] = sorted(set(names))
    return dict(sorted(out.items()))


def _check_text(value: str, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise RankingError(f"The {what} must be text.")
    if len(value) > limit:
        raise RankingError(f"The {what} is {len(value)} characters long; keep it to {limit}.")
    return value


def _check_submission_id(submission_id: str) -> None:
    if not isinstance(submission_id, str) or not 0 < len(submission_id) <= MAX_SUBMISSION_ID:
        raise RankingError(f"This form has no valid submission id. {RELOAD}")


def _iso(value: dt.datetime) -> str:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat(timespec="seconds")


def _messages(prompt: object, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "content" in m for m in prompt):
        raise ValueError(f"{where}: 'prompt' must be a non-empty text or list of messages with 'role' and 'content'.")
    return [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in prompt]


def _candidates(texts: object, where: str) -> list[dict[str, str]]:
    if not isinstance(texts, list) or len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"{where}: 'candidates' must be a list of at least two non-empty texts.")
    stripped = [t.strip() for t in texts]
    duplicates = [t for t, n in Counter(stripped).items() if n > 1]
    if duplicates:
        raise ValueError(f"{where}: two candidates are the same text ({duplicates[0][:40]!r}...): keep one of them.")
    return [{"id": candidate_id(t), "text": t} for t in texts]


# ---------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------


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

    def role(self, username: str) -> str | None:
        """'labeler' or 'admin'; None for an unknown or disabled user."""
        with self._read() as session:
            user = self._find_user(session, username)
            return user.role if user is not None and user.active else None

    def list_users(self) -> list[dict]:
        with self._read() as session:
            counts = self._current_counts_by_user(session)
            users = session.scalars(sa.select(User).order_by(User.username)).all()
        return [
            {
                "username": u.username,
                "role": u.role,
                "active": u.active,
                "simulated": u.simulated,
                "created_at": _iso(u.created_at),
                "n_rankings": counts.get(u.id, 0),
            }
            for u in users
        ]

    @staticmethod
    def _current_counts_by_user(session: Session) -> dict[int, int]:
        query = sa.select(Ranking.user_id, sa.func.count()).where(Ranking.is_current).group_by(Ranking.user_id)
        return dict(session.execute(query).tuples().all())

    # --- items ------------------------------------------------------------------------------------------------

    def import_candidates(self, rows: Iterable[dict]) -> int:
        """Add the candidate generator's items; returns how many were new (re-importing the same rows adds 0)."""
        items = []
        for i, row in enumerate(rows, start=1):
            where = f"row {i} (prompt_id {row.get('prompt_id')!r})"
            messages, candidates = _messages(row.get("prompt"), where), _candidates(row.get("candidates"), where)
            items.append(self._new_item(row, messages, candidates, gold_ranking=None))
        return self._add_items(items)

    def add_gold_items(self, rows: Iterable[dict]) -> int:
        """Add gold items: ``gold_ranking`` holds the reference ranks aligned with ``candidates`` (1 = best)."""
        items = []
        for i, row in enumerate(rows, start=1):
            where = f"gold row {i} (prompt_id {row.get('prompt_id')!r})"
            messages, candidates = _messages(row.get("prompt"), where), _candidates(row.get("candidates"), where)
            gold = row.get("gold_ranking")
            if not isinstance(gold, list) or len(gold) != len(candidates):
                raise ValueError(f"{where}: 'gold_ranking' must be a list of ranks, one per candidate.")
            ids = [c["id"] for c in candidates]
            try:
                ranking = normalize_ranks(dict(zip(ids, gold, strict=True)), ids)
            except RankingError as error:
                raise ValueError(f"{where}: bad 'gold_ranking' {gold}: {error}") from error
            items.append(self._new_item(row, messages, candidates, gold_ranking=ranking))
        return self._add_items(items)

    @staticmethod
    def _new_item(row: dict, messages: list, candidates: list, gold_ranking: dict | None) -> Item:
        texts = [c["text"] for c in candidates]
        return Item(
            id=item_id(messages, texts, is_gold=gold_ranking is not None),
            prompt_id=str(row.get("prompt_id") or item_id(messages, [], False)),
            prompt=user_message(messages),
            prompt_messages=messages,
            candidates=candidates,
            is_gold=gold_ranking is not None,
            gold_ranking=gold_ranking,
            provenance=row.get("provenance"),
        )

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

    def submit_ranking(
        self,
        username: str,
        submission_id: str,
        item_id: str,
        ranks: dict[str, int],
        *,
        none_acceptable: bool = False,
        flags: dict[str, list[str]] | None = None,
        comment: str = "",
        guidelines_version: str = "",
        display_order: list[str] | None = None,
        seconds_spent: float | None = None,
    ) -> SubmitResult:
        """Store a ranking, committed before returning. The same submission_id again returns the stored row.

        A new submission_id for an item this labeler already ranked is an edit: a new version becomes current and
        the old row stays. Submissions of a user disabled meanwhile are still kept: no finished work is dropped.
        """
        _check_submission_id(submission_id)
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
            row = {
                "ranks": normalize_ranks(ranks, ids),
                "flags": normalize_flags(flags, ids),
                "none_acceptable": bool(none_acceptable),
                "comment": _check_text(comment, "comment"),
                "guidelines_version": _check_text(guidelines_version, "guidelines version", 64),
                "display_order": self._check_display_order(display_order, ids, username, item_id),
                "seconds_spent": self._check_seconds(seconds_spent),
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

    def _check_display_order(self, order: list[str] | None, ids: list[str], username: str, item_id: str) -> list:
        if order is None:
            return assignment.display_order(ids, username, item_id, self.seed)
        if sorted(order) != sorted(ids):
            raise RankingError(f"This form is out of date: its responses do not match the item. {RELOAD}")
        return list(order)

    @staticmethod
    def _check_seconds(seconds: float | None) -> float | None:
        if seconds is None:
            return None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
            raise RankingError(f"The time spent must be a number of seconds. {RELOAD}")
        if seconds < 0:
            raise RankingError(f"The time spent cannot be negative. {RELOAD}")
        return float(seconds)

    def skip(self, username: str, submission_id: str, item_id: str, reason: str) -> None:
        """The labeler passes on the item: it is not offered to them again and goes to others. Idempotent."""
        _check_submission_id(submission_id)
        _check_text(reason, "reason")
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

    # --- the admin's view -------------------------------------------------------------------------------------

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

    def labeler_stats(self) -> list[dict]:
        """Per labeler: rankings, skips, median seconds per ranking, and accuracy on gold items.

        ``gold_accuracy`` is the mean pairwise agreement (``agreement.pairwise_agreement``) between the labeler's
        ranking and the gold ranking over the gold items they ranked; None before their first one.
        """
        rankings = self.all_current_rankings()
        with self._read() as session:
            users = session.scalars(sa.select(User).order_by(User.username)).all()
            skips = dict(
                session.execute(sa.select(Skip.user_id, sa.func.count()).group_by(Skip.user_id)).tuples().all()
            )
        by_user: dict[str, list[dict]] = defaultdict(list)
        for r in rankings:
            by_user[r["username"]].append(r)
        stats = []
        for user in users:
            mine = by_user[user.username]
            if user.role != "labeler" and not mine:
                continue
            seconds = [r["seconds_spent"] for r in mine if r["seconds_spent"] is not None]
            gold = [
                pairwise_agreement(r["ranks_list"], [r["gold_ranking"][c["id"]] for c in r["candidates"]])
                for r in mine
                if r["is_gold"]
            ]
            stats.append(
                {
                    "username": user.username,
                    "active": user.active,
                    "simulated": user.simulated,
                    "count": len(mine),
                    "skips": skips.get(user.id, 0),
                    "median_seconds": statistics.median(seconds) if seconds else None,
                    "gold_done": len(gold),
                    "gold_accuracy": sum(gold) / len(gold) if gold else None,
                }
            )
        return stats

    def agreement(self) -> dict:
        """Inter-labeler agreement on the regular items ranked by two labelers or more (see agreement.py)."""
        by_item: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for r in self.all_current_rankings():
            if not r["is_gold"]:
                by_item[r["item_id"]][r["username"]] = r["ranks_list"]
        return agreement_summary(by_item)

    def flagged_items(self) -> list[dict]:
        """Items where a labeler flagged a response or found none acceptable, with who said what."""
        flagged: dict[str, dict[str, Any]] = {}
        for r in self.all_current_rankings():
            if not (r["flags"] or r["none_acceptable"]):
                continue
            entry = flagged.setdefault(
                r["item_id"],
                {
                    "item_id": r["item_id"],
                    "prompt_id": r["prompt_id"],
                    "prompt": r["prompt"],
                    "none_acceptable_by": [],
                    "flags": [],
                    "comments": [],
                },
            )
            texts = {c["id"]: c["text"] for c in r["candidates"]}
            if r["none_acceptable"]:
                entry["none_acceptable_by"].append(r["username"])
            for cid, names in r["flags"].items():
                entry["flags"].append(
                    {"username": r["username"], "candidate_id": cid, "response": texts[cid], "flags": names}
                )
            if r["comment"]:
                entry["comments"].append({"username": r["username"], "comment": r["comment"]})
        return list(flagged.values())
