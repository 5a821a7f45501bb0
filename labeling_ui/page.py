"""The web page: the Gradio Blocks layout, its events, and the API routes (``/next_item``, ``/submit``, ``/skip``).

The labeler's Rank tab and My rankings tab, and an Admin tab for admins. Every handler takes the login from the
request and acts through ``LabelingService``; none touches the store. Components are grouped in small named
dataclasses, and handlers return ``{component: update}``, so nothing depends on the position of a component in a
list. Keyboard shortcuts and styles are in ``static/page.js`` and ``static/page.css``. Usage: see the README.
"""

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from labeling_ui.rules import FLAGS, Submission
from labeling_ui.service import LabelingService
from labeling_ui.storage import ItemView

STATIC = Path(__file__).resolve().parent / "static"
CSS = STATIC / "page.css"  # passed to launch() by labeling_ui.server
MAX_CANDIDATES = 8  # response slots on the page (letters A-H); items have K of them, K = 4 in the shipped data
LETTERS = "ABCDEFGH"[:MAX_CANDIDATES]
FLAG_LABELS = {
    "unsafe": "unsafe",
    "private_data": "private data",
    "factually_wrong": "factually wrong",
    "off_topic": "off-topic",
}
SHORTCUTS = """<div id="title"><b>Rank the responses</b>, 1 = best.</div>
<div id="shortcuts">Keys: <kbd>A</kbd>-<kbd>D</kbd> select a response &middot; <kbd>1</kbd>-<kbd>4</kbd> rank it,
select the next &middot; <kbd>Ctrl</kbd>+<kbd>Enter</kbd> submit &middot; <kbd>Alt</kbd>+<kbd>S</kbd> skip</div>"""
PRIVATE = {"api_visibility": "private"}  # the page's own events: not API routes


@dataclass
class Slot:
    """One response on the Rank tab: its column (hidden beyond the item's K responses), text, rank and flags."""

    column: gr.Column
    text: gr.Textbox
    rank: gr.Radio
    flags: gr.Dropdown


@dataclass
class RankForm:
    """The item on the page and what the labeler says about it."""

    state: gr.State  # the item on the page: id, candidate order, this form's submission id, when it was shown
    status: gr.Markdown
    progress: gr.Markdown
    prompt: gr.Textbox
    slots: list[Slot]
    none_ok: gr.Checkbox
    comment: gr.Textbox
    skip_reason: gr.Textbox
    submit_btn: gr.Button
    skip_btn: gr.Button

    def shown(self) -> list:
        """Every component ``Events.render`` sets when it shows an item."""
        head = [self.state, self.status, self.progress, self.prompt]
        slots = [part for s in self.slots for part in (s.column, s.text, s.rank, s.flags)]
        return [*head, *slots, self.none_ok, self.comment, self.skip_reason]

    def answers(self) -> set:
        """What a submit reads: the handler gets them as one {component: value} dict."""
        return {self.state, self.none_ok, self.comment, *(s.rank for s in self.slots), *(s.flags for s in self.slots)}


@dataclass
class MyRankings:
    recent: gr.Dropdown
    edit_btn: gr.Button


@dataclass
class AdminTab:
    tab: gr.Tab
    refresh_btn: gr.Button
    labelers: gr.Dataframe
    agreement: gr.Dataframe
    flagged: gr.Dataframe
    aggregation: gr.Radio
    include_gold: gr.Checkbox
    export_btn: gr.Button
    export_out: gr.Textbox


@dataclass
class Page:
    tabs: gr.Tabs
    form: RankForm
    mine: MyRankings
    admin: AdminTab


# --- the layout ---------------------------------------------------------------------------------------------------


def _slot(i: int, letter: str) -> Slot:
    with gr.Column(scale=1, min_width=220, elem_id=f"cand-{i}", elem_classes="candidate") as column:
        text = gr.Textbox(label=f"Response {letter}", interactive=False, lines=9, max_lines=9, elem_id=f"text-{i}")
        rank = gr.Radio([], label=f"Rank of {letter}", elem_id=f"rank-{i}")
        flags = gr.Dropdown(
            [(FLAG_LABELS[f], f) for f in FLAGS],
            value=[],
            multiselect=True,
            label=f"Flags of {letter}",
            elem_id=f"flags-{i}",
        )
    return Slot(column, text, rank, flags)


def _admin_tab(tab: gr.Tab) -> AdminTab:
    refresh_btn = gr.Button("Refresh", size="sm")
    labelers = gr.Dataframe(label="Labelers", interactive=False, elem_id="labelers")
    agreement = gr.Dataframe(
        label="Agreement on items ranked by two labelers or more", interactive=False, elem_id="agreement"
    )
    flagged = gr.Dataframe(
        label="Flagged items",
        interactive=False,
        elem_id="flagged",
        wrap=True,
        max_height=320,
        column_widths=["12%", "22%", "10%", "12%", "44%"],
    )
    with gr.Row(equal_height=True):
        aggregation = gr.Radio(["all", "majority", "drop_contested"], value="all", label="Aggregation")
        include_gold = gr.Checkbox(label="Include gold items")
        export_btn = gr.Button("Export preferences")
    export_out = gr.Textbox(label="Export", interactive=False, lines=2)
    return AdminTab(tab, refresh_btn, labelers, agreement, flagged, aggregation, include_gold, export_btn, export_out)


def _layout(guidelines_version: str, guidelines: str) -> Page:
    """The components, inside the caller's Blocks: a header row, then the Rank, My rankings and Admin tabs."""
    state = gr.State(None)
    with gr.Row():
        gr.HTML(SHORTCUTS, js_on_load=(STATIC / "page.js").read_text(), scale=3)
        status = gr.Markdown(elem_id="status", min_height=0)
        progress = gr.Markdown(elem_id="progress", min_height=0)
        gr.Button("Log out", link="/logout", size="sm", scale=0, min_width=80)
    with gr.Tabs() as tabs:
        with gr.Tab("Rank", id="rank"):
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    # Prompt and responses are untrusted text: read-only text boxes show them literally (never as
                    # HTML or markdown), and a script in them is just characters.
                    prompt = gr.Textbox(label="Prompt", interactive=False, lines=11, max_lines=11, elem_id="prompt")
                    with gr.Accordion(f"Guidelines (version {guidelines_version})", open=False):
                        gr.Markdown(guidelines, elem_id="guidelines")
                slots = [_slot(i, letter) for i, letter in enumerate(LETTERS)]
            with gr.Row(equal_height=True):
                none_ok = gr.Checkbox(label="None is acceptable", elem_id="none-ok", scale=1, min_width=160)
                comment = gr.Textbox(label="Comment (optional)", max_lines=3, scale=3, elem_id="comment")
                submit_btn = gr.Button("Submit ranking", variant="primary", elem_id="submit-btn", scale=1)
                skip_reason = gr.Textbox(
                    label="Skip reason", placeholder="Why you cannot judge this item", scale=2, elem_id="skip-reason"
                )
                skip_btn = gr.Button("Skip item", elem_id="skip-btn", scale=1, min_width=100)
        with gr.Tab("My rankings", id="mine"):
            recent = gr.Dropdown([], label="Your recent rankings (newest first)", elem_id="recent")
            edit_btn = gr.Button("Load to edit (saving makes a new version)", elem_id="edit-btn")
        with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
            admin = _admin_tab(admin_tab)
    form = RankForm(state, status, progress, prompt, slots, none_ok, comment, skip_reason, submit_btn, skip_btn)
    return Page(tabs, form, MyRankings(recent, edit_btn), admin)


# --- the admin tab's tables ---------------------------------------------------------------------------------------


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def labelers_table(labelers: list[dict]) -> pd.DataFrame:
    columns = ["labeler", "active", "simulated", "rankings", "skips", "median s/item", "gold items", "gold accuracy"]
    rows = [
        [
            s["username"],
            s["active"],
            s["simulated"],
            s["count"],
            s["skips"],
            _round(s["median_seconds"], 1),
            s["gold_done"],
            _round(s["gold_accuracy"], 3),
        ]
        for s in labelers
    ]
    return pd.DataFrame(rows, columns=columns)


def agreement_table(a: dict) -> pd.DataFrame:
    columns = ["items", "labeler pairs", "pairwise agreement", "Kendall's tau", "Krippendorff's alpha"]
    rounded = [_round(a[key], 3) for key in ("pairwise_agreement", "kendall_tau", "krippendorff_alpha")]
    return pd.DataFrame([[a["n_items"], a["n_labeler_pairs"], *rounded]], columns=columns)


def flagged_table(flagged: list[dict]) -> pd.DataFrame:
    rows = []
    for item in flagged:
        prompt = " ".join(item["prompt"].split())[:100]
        rows += [[item["prompt_id"], prompt, name, "none acceptable", ""] for name in item["none_acceptable_by"]]
        rows += [
            [item["prompt_id"], prompt, f["username"], ", ".join(f["flags"]), f["response"]] for f in item["flags"]
        ]
        rows += [[item["prompt_id"], prompt, c["username"], "comment", c["comment"]] for c in item["comments"]]
    return pd.DataFrame(rows, columns=["prompt id", "prompt", "labeler", "flag", "response or comment"])


# --- the events ---------------------------------------------------------------------------------------------------


class Events:
    """The page's event handlers. Each reads the login from ``request`` and returns {component: update}; a
    component left out of the answer keeps what it shows."""

    def __init__(self, service: LabelingService, page: Page):
        self.service, self.page, self.form = service, page, page.form

    def user(self, request: gr.Request) -> str:
        username = getattr(request, "username", None)
        if not username or self.service.role(username) is None:
            raise gr.Error("You are not logged in, or your account was disabled. Reload the page and log in.")
        return username

    def render(self, username: str, view: ItemView | None, message: str, ranking: dict | None = None) -> dict:
        """The form showing ``view`` (prefilled with ``ranking`` when editing it), or saying nothing is left."""
        form, ranking = self.form, ranking or {}
        candidates = view.candidates if view is not None else []
        if len(candidates) > MAX_CANDIDATES:
            raise gr.Error(f"This item has {len(candidates)} responses; the page shows at most {MAX_CANDIDATES}.")
        done, total = self.service.progress(username)
        if view is None:
            state, prompt = None, gr.Textbox(value="Nothing left to rank for you. Thank you!", label="Prompt")
        else:
            order = [cid for cid, _ in candidates]
            state = {
                "item_id": view.item_id,
                "order": order,
                "submission_id": uuid.uuid4().hex,
                "shown_at": time.time(),
            }
            label = f"Prompt (editing your ranking, version {ranking['version']})" if ranking else "Prompt"
            prompt = gr.Textbox(value=view.prompt, label=label)
        updates = {
            form.state: state,
            form.status: message,
            form.progress: f"**{done} done** of {total}",
            form.prompt: prompt,
            form.none_ok: bool(ranking.get("none_acceptable")),
            form.comment: ranking.get("comment", ""),
            form.skip_reason: "",
        }
        k, ranks, flags = len(candidates), ranking.get("ranks", {}), ranking.get("flags", {})
        for i, slot in enumerate(form.slots):
            cid, text = candidates[i] if i < k else (None, "")
            updates[slot.column] = gr.Column(visible=i < k)
            updates[slot.text] = text
            updates[slot.rank] = gr.Radio(choices=list(range(1, k + 1)), value=ranks.get(cid))
            updates[slot.flags] = flags.get(cid, [])
        return updates

    def recent_choices(self, username: str) -> dict:
        choices = [
            (
                f"{r['created_at'][:16].replace('T', ' ')} | v{r['version']} | {' '.join(r['prompt'].split())[:80]}",
                r["item_id"],
            )
            for r in self.service.recent(username)
        ]
        return {self.page.mine.recent: gr.Dropdown(choices=choices, value=None)}

    def on_load(self, request: gr.Request) -> dict:
        username = self.user(request)
        is_admin = self.service.role(username) == "admin"
        hello = f"Logged in as **{username}**." + (" You are an admin: see the Admin tab." if is_admin else "")
        shown = self.render(username, self.service.next_view(username), hello)
        return {**shown, **self.recent_choices(username), self.page.admin.tab: gr.Tab(visible=is_admin)}

    def on_submit(self, values: dict, request: gr.Request) -> dict:
        username, form = self.user(request), self.form
        state = values[form.state]
        if not state:
            shown = self.render(username, self.service.next_view(username), "Nothing to submit.")
            return {**shown, **self.recent_choices(username)}
        slots = dict(zip(state["order"], form.slots, strict=False))  # the item's K candidates fill the first slots
        submission = Submission(
            submission_id=state["submission_id"],
            item_id=state["item_id"],
            ranks={cid: values[slot.rank] for cid, slot in slots.items()},
            none_acceptable=bool(values[form.none_ok]),
            flags={cid: values[slot.flags] for cid, slot in slots.items() if values[slot.flags]},
            comment=values[form.comment] or "",
            seconds_spent=round(time.time() - state["shown_at"], 1),
            display_order=state["order"],
        )
        result = self.service.submit(username, submission)
        if not result["ok"]:  # keep the form (and its submission id) as it is: the labeler fixes and resubmits
            return {form.status: f"**Not saved.** {result['message']}"}
        shown = self.render(username, self.service.next_view(username), result["message"])
        return {**shown, **self.recent_choices(username)}

    def on_skip(self, state: dict | None, reason: str | None, request: gr.Request) -> dict:
        username = self.user(request)
        if not state:
            return {self.form.status: gr.skip()}
        result = self.service.skip(username, state["submission_id"], state["item_id"], reason or "")
        if not result["ok"]:
            return {self.form.status: f"**Not skipped.** {result['message']}"}
        return self.render(username, self.service.next_view(username), result["message"])

    def on_edit(self, item_id: str | None, request: gr.Request) -> dict:
        username = self.user(request)
        found = self.service.for_edit(username, item_id) if item_id else None
        if found is None:
            return {self.form.status: "Pick one of your rankings first."}
        view, ranking = found
        message = f"Editing your ranking (version {ranking['version']}): change it and submit to save a new version."
        return {**self.render(username, view, message, ranking), self.page.tabs: gr.Tabs(selected="rank")}

    def on_refresh(self, request: gr.Request) -> dict:
        try:
            report = self.service.admin_report(self.user(request))
        except PermissionError as error:
            raise gr.Error(str(error)) from error
        admin = self.page.admin
        return {
            admin.labelers: labelers_table(report["labelers"]),
            admin.agreement: agreement_table(report["agreement"]),
            admin.flagged: flagged_table(report["flagged"]),
        }

    def on_export(self, how: str, gold: bool, request: gr.Request) -> str:
        try:
            summary = self.service.export(self.user(request), how, bool(gold))
        except (PermissionError, ValueError) as error:  # not an admin; or nothing to export (0 pairs), said why
            raise gr.Error(str(error)) from error
        m = summary["metrics"]
        return (
            f"{m['pairs']} pairs from {m['rankings']} rankings of {m['items']} items -> "
            f"{summary['outputs']['preferences.jsonl']} (and .parquet, rankings.jsonl, summary.json)"
        )


# --- the API (gradio_client) --------------------------------------------------------------------------------------


def _json_object(text: str | dict, what: str) -> dict:
    """A JSON object sent by an API client (already a dict, or its JSON text)."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f'{what} must be a JSON object, e.g. {{"<candidate id>": 1}}: {error}') from error
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object keyed by candidate id.")
    return value


def _api_routes(service: LabelingService, events: Events) -> None:
    """``/next_item``, ``/submit`` and ``/skip``: the page's actions for programs, behind the same login."""

    def next_item(request: gr.Request) -> dict | None:
        """The caller's current item {item_id, prompt, candidates: [{id, text}], done, total}, or null."""
        return service.next_item(events.user(request))

    def submit(
        submission_id: str,
        item_id: str,
        ranks: str,
        none_acceptable: bool = False,
        flags: str = "{}",
        comment: str = "",
        seconds_spent: float | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Rank an item. ranks: JSON {candidate_id: rank} (1 = best, ties share a rank); flags: JSON
        {candidate_id: [flag, ...]}. Returns {ok, created, version, message}; a retried submission_id stores
        nothing new."""
        username = events.user(request)
        try:
            parsed_ranks, parsed_flags = _json_object(ranks, "ranks"), _json_object(flags or "{}", "flags")
        except ValueError as error:
            return {"ok": False, "created": False, "version": None, "message": str(error)}
        submission = Submission(
            submission_id=submission_id,
            item_id=item_id,
            ranks=parsed_ranks,
            none_acceptable=bool(none_acceptable),
            flags=parsed_flags,
            comment=comment or "",
            seconds_spent=seconds_spent,
        )
        return service.submit(username, submission)

    def skip(submission_id: str, item_id: str, reason: str, request: gr.Request = None) -> dict:
        """Pass on an item with a reason; it goes to other labelers. Returns {ok, message}."""
        return service.skip(events.user(request), submission_id, item_id, reason)

    gr.api(next_item, api_name="next_item")
    gr.api(submit, api_name="submit")
    gr.api(skip, api_name="skip")


# --- the whole page -----------------------------------------------------------------------------------------------


def build_page(service: LabelingService) -> gr.Blocks:
    """The Blocks app: the labeler's page, the admin tab and the API routes; ``labeling_ui.server`` serves it behind
    the login. A double click on a button that changes labels runs its event once."""
    config = service.config
    with gr.Blocks(title="Rank the responses", analytics_enabled=False, fill_width=True) as blocks:
        page = _layout(config.guidelines_version, config.guidelines)
        events = Events(service, page)
        form, mine, admin = page.form, page.mine, page.admin
        once = {"trigger_mode": "once", **PRIVATE}
        shown_and_recent = [*form.shown(), mine.recent]
        blocks.load(events.on_load, None, [*shown_and_recent, admin.tab], **PRIVATE)
        form.submit_btn.click(events.on_submit, form.answers(), shown_and_recent, **once)
        form.skip_btn.click(events.on_skip, [form.state, form.skip_reason], shown_and_recent, **once)
        mine.edit_btn.click(events.on_edit, mine.recent, [*form.shown(), page.tabs], **once)
        tables = [admin.labelers, admin.agreement, admin.flagged]
        admin.refresh_btn.click(events.on_refresh, None, tables, **PRIVATE)
        admin.tab.select(events.on_refresh, None, tables, **PRIVATE)
        admin.export_btn.click(events.on_export, [admin.aggregation, admin.include_gold], admin.export_out, **once)
        _api_routes(service, events)
    return blocks
