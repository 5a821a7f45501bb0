"""What a logged-in labeler or admin can do: ``LabelingService``, with no Gradio in it.

Every method takes the user name the login established. The web page (``labeling_ui.page``), its API routes and the
in-process simulated labelers (``labeling_ui.simulate``) all go through this one class, so they share one code path;
a refused action comes back as ``ok=False`` with a message that says what to fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from labeling_ui import stats
from labeling_ui.config import LabelingConfig
from labeling_ui.export import ExportConfig
from labeling_ui.export import main as export_stage
from labeling_ui.rules import RankingError, Submission
from labeling_ui.storage import ItemView, LabelStore

RECENT = 20  # own rankings listed for editing


def item_dict(view: ItemView, done: int, total: int) -> dict[str, Any]:
    """An item as the API returns it: the labeler's candidate order, no model identity, their progress."""
    return {
        "item_id": view.item_id,
        "prompt": view.prompt,
        "candidates": [{"id": cid, "text": text} for cid, text in view.candidates],
        "done": done,
        "total": total,
    }


class LabelingService:
    """What a logged-in user can do; every method takes the user name that the login established.

    ``export_config`` names the run the admin's export writes; None (the simulation, tests) disables the export.
    """

    def __init__(self, store: LabelStore, config: LabelingConfig, export_config: ExportConfig | None = None):
        self.store, self.config, self.export_config = store, config, export_config

    def authenticate(self, username: str, password: str) -> bool:
        return self.store.verify_user(username, password)

    def role(self, username: str | None) -> str | None:
        return self.store.role(username) if username else None

    # --- the labeler's work -----------------------------------------------------------------------------------

    def next_view(self, username: str) -> ItemView | None:
        """The labeler's current item (the same until they rank or skip it); None when nothing is left for them."""
        return self.store.next_item(username)

    def next_item(self, username: str) -> dict[str, Any] | None:
        """``next_view`` as the API returns it, with the labeler's progress."""
        view, progress = self.store.next_item_and_progress(username)
        return None if view is None else item_dict(view, *progress)

    def progress(self, username: str) -> tuple[int, int]:
        return self.store.progress(username)

    def submit(self, username: str, submission: Submission) -> dict[str, Any]:
        """Store a ranking: {ok, created, version, message}. A refused ranking is ok=False with what to fix."""
        try:
            result = self.store.submit_ranking(username, submission, self.config.guidelines_version)
        except RankingError as error:
            return {"ok": False, "created": False, "version": None, "message": str(error)}
        if not result.created:
            message = "Already saved: this submission was stored before."
        elif result.version > 1:
            message = f"Saved your edit (version {result.version})."
        else:
            message = "Saved."
        return {"ok": True, "created": result.created, "version": result.version, "message": message}

    def skip(self, username: str, submission_id: str, item_id: str, reason: str) -> dict[str, Any]:
        """Pass on an item (it goes to other labelers): {ok, message}. A reason is required."""
        if not isinstance(reason, str) or not reason.strip():
            return {"ok": False, "message": "Say in a few words why you skip this item, then skip again."}
        try:
            self.store.skip(username, submission_id, item_id, reason.strip())
        except RankingError as error:
            return {"ok": False, "message": str(error)}
        return {"ok": True, "message": "Skipped: the item goes to another labeler."}

    def recent(self, username: str) -> list[dict]:
        return self.store.recent_submissions(username, limit=RECENT)

    def for_edit(self, username: str, item_id: str) -> tuple[ItemView, dict] | None:
        return self.store.item_for_edit(username, item_id)

    # --- the admin's view -------------------------------------------------------------------------------------

    def require_admin(self, username: str | None) -> None:
        if self.role(username) != "admin":
            raise PermissionError("Only admins can see this.")

    def admin_report(self, username: str | None) -> dict[str, Any]:
        self.require_admin(username)
        rankings = self.store.all_current_rankings()
        return {
            "labelers": stats.labeler_stats(self.store.list_users(), rankings),
            "agreement": stats.agreement(rankings),
            "flagged": stats.flagged_items(rankings),
        }

    def export(self, username: str | None, aggregation: str = "all", include_gold: bool = False) -> dict[str, Any]:
        """Run labeling_ui.export for this run; returns its summary (metrics and the files written)."""
        self.require_admin(username)
        if self.export_config is None:
            raise PermissionError("This app was started without an export target.")
        return export_stage(
            dataclasses.replace(self.export_config, aggregation=aggregation, include_gold=include_gold)
        )
