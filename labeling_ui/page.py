"""The web page: the layout (``labeling_ui.layout``) wired to the labeler's events (``labeling_ui.labeler``), the
admin's (``labeling_ui.admin``) and the API routes (``/next_item``, ``/submit``, ``/edit``, ``/skip``,
``/heartbeat``, ``/release``, ``/draft``: ``labeling_ui.routes``).

The labeler's Rank tab and My rankings tab, and an Admin tab for admins. Every handler takes the login from the
request and acts through ``LabelingService``; none touches the store. Usage: see the README.
"""

import gradio as gr

from labeling_ui import timing
from labeling_ui.admin import AdminEvents
from labeling_ui.labeler import LabelerEvents
from labeling_ui.layout import STATIC, build_layout
from labeling_ui.routes import add_api_routes
from labeling_ui.service import LabelingService

CSS = STATIC / "page.css"  # passed to launch() by labeling_ui.server
PRIVATE = {"api_visibility": "private"}  # the page's own events: not API routes


def build_page(service: LabelingService) -> gr.Blocks:
    """The Blocks app: the labeler's page, the admin tab and the API routes; ``labeling_ui.server`` serves it behind
    the login. A double click on a button that changes labels runs its event once."""
    config = service.config
    with gr.Blocks(title="Rank the responses", analytics_enabled=False, fill_width=True) as blocks:
        page = build_layout(
            config.guidelines_version, config.guidelines, config.max_candidates, config.lease_seconds / 4
        )
        labeler, admin_events = LabelerEvents(service, page), AdminEvents(service, page.admin)
        form, mine, admin = page.form, page.mine, page.admin
        once = {"trigger_mode": "once", **PRIVATE}
        shown_and_recent = [*form.shown(), mine.recent]
        submitted = [*shown_and_recent, form.last, form.undo_btn, form.undo_timer]
        blocks.load(
            timing.timed("on_load", labeler.on_load), None, [*shown_and_recent, admin.tab, page.tabs], **PRIVATE
        )
        # Not the Rank tab's select event: Gradio fires it as the page starts, before `on_load` has answered.
        form.fetch_btn.click(labeler.on_fetch, form.state, form.shown(), **once)
        form.submit_btn.click(timing.timed("on_submit", labeler.on_submit), form.answers(), submitted, **once)
        form.skip_btn.click(labeler.on_skip, [form.state, form.skip_reason, form.item_key], form.shown(), **once)
        form.undo_btn.click(labeler.on_undo, form.last, submitted, **once)
        form.undo_timer.tick(
            labeler.on_undo_expired, form.status, [form.undo_btn, form.undo_timer, form.status], **PRIVATE
        )
        form.wait_timer.tick(labeler.on_wait, form.state, form.shown(), **PRIVATE)
        form.draft_btn.click(labeler.on_draft, form.answers(), form.draft_note, trigger_mode="always_last", **PRIVATE)
        mine.edit_btn.click(labeler.on_edit, mine.recent, [*form.shown(), page.tabs], **once)
        page.logout_btn.click(labeler.on_logout, form.state, None, **PRIVATE).then(
            None,
            js="() => { window.__labelingLastDraft(); window.location.href = window.__labelingRoot() + '/logout'; }",
        )
        tables = [
            admin.overview,
            admin.per_item,
            admin.batches,
            admin.labelers,
            admin.agreement,
            admin.agreement_note,
            admin.disagreements,
            admin.flagged,
            admin.flagged_pick,
            admin.users,
            admin.user_pick,
        ]
        admin.refresh_btn.click(admin_events.on_refresh, None, tables, **PRIVATE)
        admin.tab.select(admin_events.on_refresh, None, tables, **PRIVATE)
        for button, action in (
            (admin.exclude_btn, "exclude"),
            (admin.include_btn, "include"),
            (admin.reviewed_btn, "reviewed"),
        ):
            button.click(admin_events.on_review(action), admin.flagged_pick, [*tables, admin.review_out], **once)
        admin.export_btn.click(
            admin_events.on_export, [admin.aggregation, admin.include_gold], [admin.export_out, admin.download], **once
        )
        admin.add_btn.click(
            admin_events.on_user("add"), [admin.new_name, admin.new_role], [*tables, admin.user_out], **once
        )
        for button, action in (
            (admin.disable_btn, "disable"),
            (admin.enable_btn, "enable"),
            (admin.reset_btn, "reset"),
        ):
            button.click(
                admin_events.on_user(action), [admin.user_pick, admin.new_role], [*tables, admin.user_out], **once
            )
        add_api_routes(service, labeler)
    return blocks
