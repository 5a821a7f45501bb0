"""What a logged-in labeler or admin can do: ``LabelingService``, with no Gradio in it.

Every method takes the user name the login established. The web page (``labeling_ui.page``), its API routes
(``labeling_ui.routes``) and the in-process simulated labelers (``labeling_ui.simulate``) all go through this one
class, so they share one code path; a refused action comes back as ``ok=False`` with a message that says what to fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from labeling_ui import stats
from labeling_ui.config import LabelingConfig
from labeling_ui.export import ExportConfig
from labeling_ui.export import main as export_stage
from labeling_ui.rules import RankingError, Submission
from labeling_ui.storage import Assigned, ItemView, LabelStore, StaleForm, SubmitResult
from labeling_ui.users import ReadEvery, generate_password

RECENT = 20  # own rankings listed for editing
# A user's role is read again after this. Every event checks it, and reading it was a transaction of its own per
# event; a disabled account's session ends within the same 5 s (the server's session keys), and at once for an
# admin's change made in this process.
ROLE_SECONDS = 5.0
REVIEW_ACTIONS = {  # Admin tab, flagged items: action -> (excluded, reviewed) as LabelStore.set_review takes them
    "exclude": (True, True),
    "include": (False, None),
    "reviewed": (None, True),
}


def item_dict(view: ItemView, done: int, total: int) -> dict[str, Any]:
    """An item as the API returns it: the labeler's candidate order, no model identity, their progress."""
    return {
        "item_id": view.item_id,
        "prompt": view.prompt,
        "candidates": [{"id": cid, "text": text} for cid, text in view.candidates],
        "done": done,
        "total": total,
    }


# The database does not answer (refused, dropped, timed out): what the labeler is told, with their work kept.
DATABASE_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError)
UNAVAILABLE = (
    "The server cannot save right now: its database does not answer. Nothing is lost: your ranks stay on this page "
    "(and in its draft); submit again in a moment."
)


class LabelingService:
    """What a logged-in user can do; every method takes the user name that the login established.

    ``export_config`` names the run the admin's export writes; None (the simulation, tests) disables the export.
    """

    def __init__(self, store: LabelStore, config: LabelingConfig, export_config: ExportConfig | None = None):
        self.store, self.config, self.export_config = store, config, export_config
        self._roles = ReadEvery(store.role, ROLE_SECONDS, DATABASE_DOWN)

    def authenticate(self, username: str, password: str) -> bool:
        return self.store.verify_user(username, password)

    def role(self, username: str | None) -> str | None:
        """The user's role, read at most every ``ROLE_SECONDS``; while the database does not answer, the last one
        read (their session was checked)."""
        if not username:
            return None
        return self._roles(username)

    # --- the labeler's work -----------------------------------------------------------------------------------

    def assign(self, username: str) -> Assigned:
        """The labeler's item in hand (the same until they rank or skip it) with a fresh lease, and their progress;
        ``view`` is None when nothing is left for them now."""
        return self.store.assign(username)

    def next_item(self, username: str) -> dict[str, Any] | None:
        """``assign`` as the API returns it, with the labeler's progress."""
        got = self.store.assign(username)
        return None if got.view is None else item_dict(got.view, got.done, got.total)

    def view_in_hand(self, username: str, item_id: str) -> ItemView | None:
        return self.store.view_in_hand(username, item_id)

    def progress(self, username: str) -> tuple[int, int]:
        return self.store.progress(username)

    def heartbeat(self, username: str, item_id: str) -> dict[str, Any]:
        """The page still shows ``item_id``: keep holding it. {ok}: False when it is not in hand (any more)."""
        return {"ok": self.store.renew_lease(username, item_id or "")}

    def release(self, username: str, item_id: str) -> dict[str, Any]:
        """The page closed or logged out: others may be given the item now (it stays in hand, with its draft)."""
        self.store.release_lease(username, item_id or "")
        return {"ok": True}

    def save_draft(self, username: str, item_id: str, draft: dict[str, Any]) -> dict[str, Any]:
        """Keep unfinished work on the item in hand: {ok, message}."""
        try:
            saved = self.store.save_draft(username, item_id, draft)
        except RankingError as error:
            return {"ok": False, "message": str(error)}
        except DATABASE_DOWN:
            return {"ok": False, "message": UNAVAILABLE}
        return {"ok": saved, "message": "Draft saved." if saved else "Not your item in hand: draft not kept."}

    def draft(self, username: str, item_id: str) -> dict[str, Any] | None:
        return self.store.draft(username, item_id)

    def submit(self, username: str, submission: Submission, edits: int | None = None) -> dict[str, Any]:
        """Store a ranking: {ok, created, version, message, stale}. A refused ranking is ok=False with what to fix;
        ``stale`` says the page that sent it is out of date (reload it rather than fix the form).

        ``edits``: the version of the labeler's current ranking this one replaces (My rankings); without it the
        ranking must be of their item in hand, so a stale page cannot overwrite anything."""
        return self.submit_and_next(username, submission, edits, then_next=False)[0]

    def submit_and_next(
        self, username: str, submission: Submission, edits: int | None = None, then_next: bool = True
    ) -> tuple[dict[str, Any], Assigned | None]:
        """``submit``, and the labeler's next item with it (``assign``) in the same transaction when the ranking is
        stored; None when it is not (or ``then_next`` is false)."""
        store, version = self.store, self.config.guidelines_version
        got = None
        try:
            if then_next:
                result, got = store.submit_and_assign(username, submission, version, edits)
            else:
                result = store.submit_ranking(username, submission, version, edits)
        except RankingError as error:
            stale = isinstance(error, StaleForm)
            return {"ok": False, "created": False, "version": None, "message": str(error), "stale": stale}, None
        except DATABASE_DOWN:
            return {"ok": False, "created": False, "version": None, "message": UNAVAILABLE, "stale": False}, None
        return self._saved(result), got

    @staticmethod
    def _saved(result: SubmitResult) -> dict[str, Any]:
        """What the labeler is told of a ranking stored (or found stored: a retried submission)."""
        if not result.created:
            message = "Already saved: this submission was stored before."
        elif result.version > 1:
            message = f"Saved your edit (version {result.version})."
        else:
            message = "Saved."
        return {"ok": True, "created": result.created, "version": result.version, "message": message, "stale": False}

    def skip(self, username: str, submission_id: str, item_id: str, reason: str) -> dict[str, Any]:
        """Pass on the item in hand (it goes to other labelers): {ok, message, stale}. A reason is required."""
        if not isinstance(reason, str) or not reason.strip():
            message = "Say in a few words why you skip this item (the box left of Skip), then skip again."
            return {"ok": False, "message": message, "stale": False}
        try:
            self.store.skip(username, submission_id, item_id or "", reason.strip())
        except RankingError as error:
            return {"ok": False, "message": str(error), "stale": isinstance(error, StaleForm)}
        except DATABASE_DOWN:
            return {"ok": False, "message": UNAVAILABLE, "stale": False}
        return {"ok": True, "message": "Skipped: the item goes to another labeler.", "stale": False}

    def recent(self, username: str) -> list[dict]:
        return self.store.recent_submissions(username, limit=RECENT)

    def for_edit(self, username: str, item_id: str) -> tuple[ItemView, dict] | None:
        return self.store.item_for_edit(username, item_id)

    # --- the admin's view -------------------------------------------------------------------------------------

    def require_admin(self, username: str | None) -> str:
        """The admin's user name; a PermissionError for anyone else."""
        if username is None or self.role(username) != "admin":
            raise PermissionError("Only admins can see this.")
        return username

    def admin_report(self, username: str | None) -> dict[str, Any]:
        self.require_admin(username)
        rankings = self.store.all_current_rankings()
        agreement = stats.agreement(rankings)
        return {
            "labelers": stats.labeler_stats(self.store.list_users(), rankings),
            "agreement": agreement,
            "agreement_note": stats.agreement_note(agreement, rankings, self.config.overlap),
            "disagreements": stats.disagreements(rankings),
            "flagged": stats.flagged_items(rankings),
            "per_item": self.store.rankings_per_item(),
            "batches": self.store.import_batches(),
            "overlap": self.config.overlap,
        }

    def review(self, username: str | None, item_id: str | None, action: str) -> str:
        """An admin's decision on a flagged item: 'exclude' (from the export), 'include' again, or 'reviewed'."""
        admin = self.require_admin(username)
        if not item_id:
            return "Pick a flagged item first."
        excluded, reviewed = REVIEW_ACTIONS[action]
        state = self.store.set_review(item_id, admin, excluded=excluded, reviewed=reviewed)
        shown = "excluded from the export" if state["excluded"] else "in the export"
        return f"Item {item_id[:12]}: {shown}{', reviewed' if state['reviewed'] else ''}."

    # --- user management (the Admin tab; the same store methods as `python -m labeling_ui users`) -----------------

    def add_user(self, username: str | None, name: str, role: str = "labeler") -> str:
        """Add a labeler (or admin) with a generated password; returns the password, shown to the admin once."""
        self.require_admin(username)
        password = generate_password()
        self.store.add_user((name or "").strip(), password, role=role)
        return password

    def set_active(self, username: str | None, name: str, active: bool) -> None:
        self.require_admin(username)
        if name == username and not active:
            raise ValueError("You cannot disable yourself: ask another admin.")
        self.store.set_active(name, active)
        self._roles.forget(name)

    def reset_password(self, username: str | None, name: str) -> str:
        """A new generated password for ``name`` (their old one stops working); shown to the admin once."""
        self.require_admin(username)
        password = generate_password()
        self.store.reset_password(name, password)
        self._roles.forget(name)
        return password

    def users(self, username: str | None) -> list[dict]:
        self.require_admin(username)
        return self.store.list_users()

    def export(self, username: str | None, aggregation: str = "all", include_gold: bool = False) -> dict[str, Any]:
        """Run labeling_ui.export for this run; returns its summary (metrics and the files written)."""
        self.require_admin(username)
        if self.export_config is None:
            raise PermissionError("This app was started without an export target.")
        return export_stage(
            dataclasses.replace(self.export_config, aggregation=aggregation, include_gold=include_gold)
        )
