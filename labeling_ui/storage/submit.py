"""The labeler's work, part two: what they hand in. Rankings (new, retried, edited) and skips of their item in hand,
and their own current rankings."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labeling_ui import assignment
from labeling_ui.db import Assignment, Draft, Item, Ranking, Skip, User, utcnow
from labeling_ui.rules import (
    RELOAD,
    RankingError,
    Submission,
    check_display_order,
    check_seconds,
    check_submission_id,
    check_text,
    normalize_flags,
    normalize_ranks,
)
from labeling_ui.storage.assign import Assigned, Assigning
from labeling_ui.storage.base import ItemView


class StaleForm(RankingError):
    """Refused because the page that sent it is out of date: the item is ranked already or not in hand (any more)."""


ALREADY_RANKED = (
    "You already ranked this item (in another tab or window?): this page was out of date and nothing was saved. "
    "To change that ranking, open it from the My rankings tab."
)
NOT_IN_HAND = (
    "This is not the item you hold now (the page is out of date, or it was closed so long that the item went to "
    "others): nothing was saved. Reload the page (API: call /next_item) to get your current item."
)


@dataclass
class SubmitResult:
    ranking_id: int
    version: int
    created: bool  # False when this submission_id was already stored (a retry): nothing new was written


# The submit's statements, built once with their values as parameters (see ``labeling_ui.storage.assign``).
_RANKING_BY_SUBMISSION = sa.select(Ranking).where(Ranking.submission_id == sa.bindparam("submission"))
_SKIP_BY_SUBMISSION = sa.select(Skip).where(Skip.submission_id == sa.bindparam("submission"))
_MINE = (Ranking.item_id == sa.bindparam("item")) & (Ranking.user_id == sa.bindparam("user"))
_CURRENT_VERSION = sa.select(Ranking.version).where(_MINE & Ranking.is_current)
_RANKED = sa.select(Ranking.id).where(_MINE).limit(1)
_SKIPPED = sa.select(Skip.id).where(Skip.item_id == sa.bindparam("item"), Skip.user_id == sa.bindparam("user"))
_NOT_CURRENT = (sa.update(Ranking).where(_MINE & Ranking.is_current).values(is_current=False)).execution_options(
    synchronize_session=False
)
_MAKE_CURRENT = (
    sa.update(Ranking).where(Ranking.id == sa.bindparam("ranking")).values(is_current=True)
).execution_options(synchronize_session=False)
_DROP_LEASE = (
    sa.delete(Assignment)
    .where(Assignment.user_id == sa.bindparam("user"), Assignment.item_id == sa.bindparam("item"))
    .returning(Assignment.counted)
    .execution_options(synchronize_session=False)
)
_DROP_DRAFT = (
    sa.delete(Draft).where(Draft.user_id == sa.bindparam("user"), Draft.item_id == sa.bindparam("item"))
).execution_options(synchronize_session=False)


@functools.cache
def _insert_ranking(dialect: str) -> sa.Insert:
    """INSERT a ranking ... ON CONFLICT (submission_id) DO NOTHING RETURNING its id, in the dialect."""
    insert = {"sqlite": sqlite, "postgresql": postgresql}[dialect].insert(Ranking.__table__)
    return insert.on_conflict_do_nothing(index_elements=["submission_id"]).returning(Ranking.__table__.c.id)


def retried(stored: Any, user: User, item_id: str) -> bool:
    """Whether a submission id stored before (``stored``, or None) makes this call a retry of that same labeler's
    answer for that same item; the id used for another item is refused."""
    if stored is None:
        return False
    if (stored.user_id, stored.item_id) != (user.id, item_id):
        raise RankingError(f"This submission id was already used for another item. {RELOAD}")
    return True


class Submitting(Assigning):
    """Built on ``Assigning``: a new ranking or a skip is taken only for the item in hand, and ``submit_and_assign``
    hands out the next item in the Submit's own transaction."""

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
            return result, self._assign(session, username)

    def _submit(
        self, session: Session, username: str, submission: Submission, guidelines_version: str, edits: int | None
    ) -> SubmitResult:
        """``submit_ranking`` in the caller's transaction."""
        submission_id, item_id = submission.submission_id, submission.item_id
        # Locking the user row serialises one labeler's submits on PostgreSQL (a double click sends two):
        # versions are then numbered without gaps or clashes. SQLite's BEGIN IMMEDIATE already serialises.
        self._counting(session)
        user = self._labeler(session, username, lock=True)
        stored = session.scalars(_RANKING_BY_SUBMISSION, {"submission": submission_id}).one_or_none()
        if retried(stored, user, item_id):
            return SubmitResult(ranking_id=stored.id, version=stored.version, created=False)
        item = session.get(Item, item_id)
        if item is None:
            raise RankingError(f"This item does not exist (any more). {RELOAD}")
        mine = {"item": item_id, "user": user.id}
        current = session.scalar(_CURRENT_VERSION, mine)
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
                assignment.display_order(ids, username, item_id, self.config.seed)
                if shown is None
                else check_display_order(shown, ids)
            ),
            "seconds_spent": check_seconds(submission.seconds_spent),
        }
        version = (current or 0) + 1
        # Inserted as not current first: if a concurrent retry stored this submission_id after our check, the
        # insert does nothing and this transaction has changed nothing, so that stored row is the answer.
        values = {"submission_id": submission_id, "item_id": item_id, "user_id": user.id, "version": version}
        values |= {"is_current": False, "created_at": utcnow(), **row}
        inserted = session.execute(_insert_ranking(self.engine.dialect.name), values).scalar_one_or_none()
        if inserted is None:
            stored = session.scalars(_RANKING_BY_SUBMISSION, {"submission": submission_id}).one()
            return SubmitResult(ranking_id=stored.id, version=stored.version, created=False)
        if version == 1:  # one more labeler ranked it; their hands are free for the next item
            # Counted before the ranking is current: the labelers done with the item move, and then they join.
            released = self._let_go(session, user, item_id)
            state = self._change(session, item_id, rankings=1, held=-released)
            self._count_done(session, user.id, state, ranked=True)
        else:
            session.execute(_NOT_CURRENT, mine)
        session.execute(_MAKE_CURRENT, {"ranking": inserted})
        return SubmitResult(ranking_id=inserted, version=version, created=True)

    @staticmethod
    def _let_go(session: Session, user: User, item_id: str) -> int:
        """The item is done with: its lease and draft go (only its own: a new item handed out meanwhile stays).
        Returns the counted leases that went (0 or 1)."""
        mine = {"item": item_id, "user": user.id}
        released = sum(session.execute(_DROP_LEASE, mine).scalars().all())
        session.execute(_DROP_DRAFT, mine)
        return released

    def skip(self, username: str, submission_id: str, item_id: str, reason: str) -> None:
        """The labeler passes on their item in hand: it is not offered to them again and goes to others. Idempotent;
        refused for an item they ranked already or do not hold (a page out of date)."""
        check_submission_id(submission_id)
        check_text(reason, "reason")
        with self._begin() as session:
            self._counting(session)
            # Locked as a submit locks it: a skip and a submit of one item cannot both pass their checks.
            user = self._labeler(session, username, lock=True)
            stored = session.scalars(_SKIP_BY_SUBMISSION, {"submission": submission_id}).one_or_none()
            if retried(stored, user, item_id):
                return
            if session.get(Item, item_id) is None:
                raise RankingError(f"This item does not exist (any more). {RELOAD}")
            mine = {"item": item_id, "user": user.id}
            if session.scalar(_SKIPPED, mine):
                return  # skipped before, from another tab
            if session.scalar(_RANKED, mine):
                raise StaleForm(ALREADY_RANKED.replace("nothing was saved", "it cannot be skipped now"))
            own = self._in_hand(session, user)
            if own is None or own.item_id != item_id:
                raise StaleForm(NOT_IN_HAND)
            released = self._let_go(session, user, item_id)
            state = self._change(session, item_id, held=-released)  # before the skip: the labeler joins after
            session.add(
                Skip(submission_id=submission_id, item_id=item_id, user_id=user.id, reason=reason, created_at=utcnow())
            )
            self._count_done(session, user.id, state, ranked=False)

    @staticmethod
    def _current_of(user: User) -> sa.Select:
        return (
            sa.select(Ranking, Item)
            .join(Item, Item.id == Ranking.item_id)
            .where(Ranking.user_id == user.id, Ranking.is_current)
        )

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
