"""The admin's events on the Admin tab: the overview and its tables, the review of flagged items, the export and its
download, and the users. Each handler checks the login is an admin's and acts through ``LabelingService``.
"""

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from labeling_ui import admin_tables as tables
from labeling_ui.labeler import logged_in
from labeling_ui.layout import AdminTab
from labeling_ui.service import LabelingService

EXPORTED = ("preferences.jsonl", "preferences.parquet", "rankings.jsonl")  # what the admin's download offers


class AdminEvents:
    """The Admin tab's event handlers; each returns {component: update}, as the labeler's do."""

    def __init__(self, service: LabelingService, admin: AdminTab):
        self.service, self.admin = service, admin

    def admin_user(self, request: gr.Request) -> str:
        username = logged_in(self.service, request)
        if self.service.role(username) != "admin":
            raise gr.Error("Only admins can do this.")
        return username

    def on_refresh(self, request: gr.Request) -> dict:
        try:
            username = logged_in(self.service, request)
            report = self.service.admin_report(username)
            users = self.service.users(username)
        except PermissionError as error:
            raise gr.Error(str(error)) from error
        admin = self.admin
        return {
            admin.overview: tables.overview_text(report),
            admin.per_item: tables.per_item_table(report["per_item"], report["overlap"]),
            admin.batches: tables.batches_table(report["batches"]),
            admin.labelers: tables.labelers_table(report["labelers"]),
            admin.agreement: tables.agreement_table(report["agreement"]),
            admin.agreement_note: report["agreement_note"] or "",
            admin.disagreements: tables.disagreements_table(report["disagreements"]),
            admin.flagged: tables.flagged_table(report["flagged"]),
            admin.flagged_pick: gr.Dropdown(choices=tables.flagged_choices(report["flagged"]), value=None),
            admin.users: tables.users_table(users),
            admin.user_pick: gr.Dropdown(choices=[u["username"] for u in users], value=None),
        }

    def on_review(self, action: str):
        def handler(item_id: str | None, request: gr.Request) -> dict:
            message = self.service.review(self.admin_user(request), item_id, action)
            return {**self.on_refresh(request), self.admin.review_out: message}

        return handler

    def on_export(self, how: str, gold: bool, request: gr.Request) -> dict:
        try:
            summary = self.service.export(self.admin_user(request), how, bool(gold))
        except (PermissionError, ValueError) as error:  # not an admin; or nothing to export (0 pairs), said why
            raise gr.Error(str(error)) from error
        m, outputs = summary["metrics"], summary["outputs"]
        # Copies in a folder of their own: Gradio serves files only from the working or temporary directory, and
        # the run's export folder may be anywhere (--runs_dir).
        folder = Path(tempfile.mkdtemp(prefix="labeling-export-"))
        files = [str(shutil.copy(outputs[name], folder / name)) for name in EXPORTED]
        excluded = m["items_excluded_by_admins"]
        text = (
            f"{m['pairs']} pairs from {m['rankings']} rankings of {m['items']} items"
            + (f" ({excluded} items excluded by admins)" if excluded else "")
            + f". Written to {outputs['preferences.jsonl']}; download below."
        )
        return {self.admin.export_out: text, self.admin.download: files}

    def on_user(self, action: str):
        def handler(name: str | None, role: str | None, request: gr.Request) -> dict:
            username, service = self.admin_user(request), self.service
            name = (name or "").strip()
            if not name:
                return {self.admin.user_out: "Name a user first."}
            try:
                if action == "add":
                    password = service.add_user(username, name, role or "labeler")
                    message = f"Added {role} {name!r}. Password (shown only now; pass it on privately): {password}"
                elif action == "disable":
                    service.set_active(username, name, False)
                    message = f"Disabled {name!r}: they can no longer log in; their rankings stay."
                elif action == "enable":
                    service.set_active(username, name, True)
                    message = f"Enabled {name!r}: they can log in again."
                else:
                    password = service.reset_password(username, name)
                    message = f"New password for {name!r} (shown only now; the old one no longer works): {password}"
            except ValueError as error:
                message = str(error)
            return {**self.on_refresh(request), self.admin.user_out: message}

        return handler
