"""The labeler's work, part two: what they hand in. Rankings (new, retried, edited) and skips of their item in hand,
and their own current rankings."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from labeling_ui import assignment
from labeling_ui.db import Assignment, Draft, Item, QueueEntry, Ranking, Skip, User, utcnow
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
                assignment.display_order(ids, username, item_id, self.config.seed)
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
