"""The page's actions as API routes for programs (gradio_client), behind the same login as the page: ``/next_item``,
``/submit``, ``/edit``, ``/skip``, and the routes the page's script calls, ``/heartbeat``, ``/release`` and ``/draft``.
Each is timed when ``labeling_ui.timing`` is on. (``labeling_ui.api`` is the stage's Python API for other packages.)
"""

import gradio as gr

from labeling_ui import timing
from labeling_ui.labeler import LabelerEvents, logged_in, submission
from labeling_ui.service import LabelingService


def refused(error: Exception) -> dict:
    """What /submit and /edit answer to a form they cannot read: nothing stored, and why."""
    return {"ok": False, "created": False, "version": None, "message": str(error), "stale": False}


class ApiRoutes:
    """The routes, one method each: Gradio reads a route's parameters, their types and its description from the
    method. ``labeler`` keeps the draft the page's script sends."""

    def __init__(self, service: LabelingService, labeler: LabelerEvents):
        self.service, self.labeler = service, labeler

    def next_item(self, request: gr.Request) -> dict | None:
        """The caller's item in hand {item_id, prompt, candidates: [{id, text}], done, total}, or null."""
        return self.service.next_item(logged_in(self.service, request))

    def submit(
        self,
        submission_id: str,
        item_id: str,
        ranks: str,
        none_acceptable: bool = False,
        flags: str = "{}",
        comment: str = "",
        seconds_spent: float | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Rank the item in hand (from /next_item). ranks: JSON {candidate_id: rank} (1 = best, ties share a rank);
        flags: JSON {candidate_id: [flag, ...]}. Returns {ok, created, version, message, stale}; a retried
        submission_id stores nothing new; an item ranked already or not in hand is refused (stale)."""
        username = logged_in(self.service, request)
        try:
            sent = submission(submission_id, item_id, ranks, none_acceptable, flags, comment, seconds_spent)
        except ValueError as error:
            return refused(error)
        return self.service.submit(username, sent)

    def edit(
        self,
        submission_id: str,
        item_id: str,
        ranks: str,
        edits_version: int,
        none_acceptable: bool = False,
        flags: str = "{}",
        comment: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Change a ranking already submitted: edits_version is its current version (a newer one is refused).
        Returns what /submit returns; the new version becomes current, the old one is kept."""
        username = logged_in(self.service, request)
        try:
            sent = submission(submission_id, item_id, ranks, none_acceptable, flags, comment, None)
            version = int(edits_version)
        except (TypeError, ValueError) as error:
            return refused(error)
        return self.service.submit(username, sent, version)

    def skip(self, submission_id: str, item_id: str, reason: str, request: gr.Request = None) -> dict:
        """Pass on the item in hand with a reason; it goes to other labelers. Returns {ok, message, stale}."""
        return self.service.skip(logged_in(self.service, request), submission_id, item_id, reason)

    def heartbeat(self, item_id: str, request: gr.Request = None) -> dict:
        """The item is still on screen: hold it longer. Returns {ok}; false when it is not in hand any more."""
        return self.service.heartbeat(logged_in(self.service, request), item_id)

    def release(self, item_id: str, request: gr.Request = None) -> dict:
        """The page with the item closed: others may be given it now. Returns {ok}."""
        return self.service.release(logged_in(self.service, request), item_id)

    def draft(
        self,
        item_id: str,
        ranks: str,
        flags: str,
        none_acceptable: bool = False,
        comment: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Keep what the page shows of the item in hand as the labeler's draft (the page sends it as it closes).
        ranks: JSON list, one per response as shown, a rank or null; flags: JSON list of the indices of each
        response's ticked flags. Returns {ok}."""
        return self.labeler.page_draft(
            logged_in(self.service, request), item_id, ranks, flags, none_acceptable, comment
        )


def add_api_routes(service: LabelingService, labeler: LabelerEvents) -> None:
    """Adds the routes to the Blocks being built, each timed when ``labeling_ui.timing`` is on."""
    routes = ApiRoutes(service, labeler)
    for route in (
        routes.next_item,
        routes.submit,
        routes.edit,
        routes.skip,
        routes.heartbeat,
        routes.release,
        routes.draft,
    ):
        gr.api(timing.timed(route.__name__, route), api_name=route.__name__)
