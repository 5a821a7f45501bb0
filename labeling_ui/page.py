"""The web page: the Gradio Blocks layout, its events, and the API routes (``/next_item``, ``/submit``, ``/edit``,
``/skip``, ``/heartbeat``, ``/release``).

The labeler's Rank tab and My rankings tab, and an Admin tab for admins. Every handler takes the login from the
request and acts through ``LabelingService``; none touches the store. Components are grouped in small named
dataclasses, and handlers return ``{component: update}``, so nothing depends on the position of a component in a
list. Keyboard shortcuts, the help overlay, the clock, draft saving and lease renewal are in ``static/page.js``;
styles (the sticky action bar, the response grid) in ``static/page.css``. Usage: see the README.
"""

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from labeling_ui import admin_tables as tables
from labeling_ui import timing
from labeling_ui.config import PAGE_SLOTS
from labeling_ui.rules import FLAGS, Submission, show_bidi_controls
from labeling_ui.service import LabelingService
from labeling_ui.storage import Assigned, ItemView

STATIC = Path(__file__).resolve().parent / "static"
CSS = STATIC / "page.css"  # passed to launch() by labeling_ui.server
LETTERS = "ABCDEFGH"[:PAGE_SLOTS]
FLAG_LABELS = {
    "unsafe": "unsafe",
    "private_data": "private data",
    "factually_wrong": "factually wrong",
    "off_topic": "off-topic",
}
FLAG_KEYS = {"unsafe": "U", "private_data": "P", "factually_wrong": "W", "off_topic": "O"}  # as in static/page.js
UNDO_SECONDS = 10  # the Undo button stays for this long after a submit; the server allows 5 s more (a slow click)
UNDO_HINT = " Undo (Alt+Z) reopens it to edit, for a few seconds."
DRAFT_RESTORED = "Your unsaved ranks of this item are back (a draft)."
EXPORTED = ("preferences.jsonl", "preferences.parquet", "rankings.jsonl")  # what the admin's download offers
PRIVATE = {"api_visibility": "private"}  # the page's own events: not API routes


def help_html() -> str:
    """The ``?`` overlay: every key of the Rank tab."""
    flags = "".join(
        f"<tr><td><kbd>{key}</kbd></td><td>flag the selected response {FLAG_LABELS[flag]} (again: unflag)</td></tr>"
        for flag, key in FLAG_KEYS.items()
    )
    return f"""<div id="help" role="dialog" aria-label="Keyboard shortcuts"><b>Keys</b> (outside text boxes)
<table>
<tr><td><kbd>A</kbd>-<kbd>{LETTERS[-1]}</kbd></td><td>select a response (as many letters as the item has)</td></tr>
<tr><td><kbd>1</kbd>-<kbd>{PAGE_SLOTS}</kbd></td><td>rank the selected response and select the next; ties share a
rank (1, 1, 2 or 1, 1, 3)</td></tr>
<tr><td><kbd>0</kbd></td><td>clear the rank of the selected response</td></tr>
{flags}
<tr><td><kbd>X</kbd></td><td>expand or collapse the selected response</td></tr>
<tr><td><kbd>N</kbd></td><td>none is acceptable (on / off)</td></tr>
<tr><td><kbd>M</kbd></td><td>write a comment</td></tr>
<tr><td><kbd>Esc</kbd></td><td>leave a text box; close this list</td></tr>
<tr><td><kbd>Ctrl</kbd>+<kbd>Enter</kbd></td><td>submit (also in a text box)</td></tr>
<tr><td><kbd>Alt</kbd>+<kbd>S</kbd></td><td>skip (write the reason first)</td></tr>
<tr><td><kbd>Alt</kbd>+<kbd>Z</kbd></td><td>undo the last submit, for {UNDO_SECONDS} s: it opens again to edit</td></tr>
<tr><td><kbd>?</kbd></td><td>show or hide this list</td></tr>
</table>Your work on an item is kept as a draft while you go: a reload or a new login shows it again.</div>"""


def shortcuts_html(k: int) -> str:
    """The key hint for an item of ``k`` responses."""
    if k < 2:
        return '<div id="shortcuts">Keys: <kbd>?</kbd> lists them all</div>'
    return (
        f'<div id="shortcuts">Keys: <kbd>A</kbd>-<kbd>{LETTERS[k - 1]}</kbd> select &middot; <kbd>1</kbd>-'
        f"<kbd>{k}</kbd> rank, select the next &middot; <kbd>Ctrl</kbd>+<kbd>Enter</kbd> submit &middot; "
        "<kbd>Alt</kbd>+<kbd>S</kbd> skip &middot; <kbd>?</kbd> all keys</div>"
    )


@dataclass
class Slot:
    """One response on the Rank tab: its card (hidden beyond the item's K responses), text, rank and flags."""

    column: gr.Column
    text: gr.Textbox
    rank: gr.Radio
    flags: gr.CheckboxGroup


@dataclass
class RankForm:
    """The item on the page and what the labeler says about it."""

    state: gr.State  # the item on the page: id, candidate order, submission id, when shown, the version it edits
    last: gr.State  # the last submit, for Undo: {item_id, version, at}
    status: gr.Markdown
    progress: gr.Markdown
    hint: gr.HTML
    prompt: gr.Textbox
    slots: list[Slot]
    none_ok: gr.Checkbox
    comment: gr.Textbox
    skip_reason: gr.Textbox
    submit_btn: gr.Button
    skip_btn: gr.Button
    undo_btn: gr.Button
    # The item on the page for static/page.js: its id (the lease to renew and release), "edit:<id>" (holds
    # nothing), "none" (nothing to rank), "" (nothing asked for yet: the script clicks `fetch_btn` once the Rank
    # tab is on screen; an admin starts so), "loading" before the page's first answer.
    item_key: gr.Textbox
    fetch_btn: gr.Button
    draft_btn: gr.Button  # clicked by static/page.js after a pause in the labeler's input
    draft_note: gr.Markdown
    wait_timer: gr.Timer  # checks again while others hold the last items
    undo_timer: gr.Timer  # takes the Undo button away

    def shown(self) -> list:
        """Every component ``Events.render`` sets when it shows an item."""
        head = [self.state, self.status, self.progress, self.hint, self.prompt, self.item_key, self.submit_btn]
        slots = [part for s in self.slots for part in (s.column, s.text, s.rank, s.flags)]
        return [*head, *slots, self.none_ok, self.comment, self.skip_reason, self.draft_note, self.wait_timer]

    def answers(self) -> set:
        """What a submit or a draft reads: the handler gets them as one {component: value} dict."""
        ranks_and_flags = [part for s in self.slots for part in (s.rank, s.flags)]
        return {self.state, self.item_key, self.none_ok, self.comment, *ranks_and_flags}


@dataclass
class MyRankings:
    recent: gr.Dropdown
    edit_btn: gr.Button


@dataclass
class AdminTab:
    tab: gr.Tab
    refresh_btn: gr.Button
    overview: gr.Markdown
    per_item: gr.Dataframe
    batches: gr.Dataframe
    labelers: gr.Dataframe
    agreement: gr.Dataframe
    agreement_note: gr.Markdown
    disagreements: gr.Dataframe
    flagged: gr.Dataframe
    flagged_pick: gr.Dropdown
    exclude_btn: gr.Button
    include_btn: gr.Button
    reviewed_btn: gr.Button
    review_out: gr.Markdown
    aggregation: gr.Radio
    include_gold: gr.Checkbox
    export_btn: gr.Button
    export_out: gr.Textbox
    download: gr.File
    users: gr.Dataframe
    new_name: gr.Textbox
    new_role: gr.Radio
    add_btn: gr.Button
    user_pick: gr.Dropdown
    disable_btn: gr.Button
    enable_btn: gr.Button
    reset_btn: gr.Button
    user_out: gr.Textbox


@dataclass
class Page:
    tabs: gr.Tabs
    logout_btn: gr.Button
    form: RankForm
    mine: MyRankings
    admin: AdminTab


# --- the layout ---------------------------------------------------------------------------------------------------


def _slot(i: int, letter: str, slots: int) -> Slot:
    with gr.Column(scale=1, min_width=300, elem_id=f"cand-{i}", elem_classes="candidate") as column:
        # Read-only text boxes show the response literally (never as HTML or markdown): 7 lines, then it scrolls,
        # or X / the Expand button shows it whole, across the page.
        text = gr.Textbox(label=f"Response {letter}", interactive=False, lines=7, max_lines=7, elem_id=f"text-{i}")
        with gr.Row(elem_classes="card-tools"):
            clear = gr.Button("Clear rank", size="sm", elem_classes="clear-btn", elem_id=f"clear-{i}")
            expand = gr.Button("Expand", size="sm", elem_classes="expand-btn", elem_id=f"expand-{i}")
        expand.click(None, js=f"() => window.__labelingExpand && window.__labelingExpand({i})")
        # Each item sets its own ranks 1..K; every rank a page can show is a choice from the start, so a page that
        # outlived a restart of the server (which forgot the session's choices) still submits what it shows.
        rank = gr.Radio(list(range(1, slots + 1)), label=f"Rank of {letter}", elem_id=f"rank-{i}")
        # Checkboxes, not a multiselect: ticking one changes no size, so nothing on the page moves.
        flags = gr.CheckboxGroup(
            [(FLAG_LABELS[f], f) for f in FLAGS], value=[], label=f"Flags of {letter}", elem_id=f"flags-{i}"
        )
    # In the browser alone: the rank is emptied (a radio cannot be unticked) and a draft follows, as after a click.
    clear.click(
        None, None, rank, js="() => { window.__labelingDraftSoon && window.__labelingDraftSoon(); return null; }"
    )
    return Slot(column, text, rank, flags)


def _admin_tab(tab: gr.Tab) -> AdminTab:
    refresh_btn = gr.Button("Refresh", size="sm")
    overview = gr.Markdown(elem_id="overview")
    # Side by side where both fit whole; on a narrower screen (1024 px) one above the other, no column cut off.
    with gr.Row():
        per_item = gr.Dataframe(
            label="Regular items by number of rankings", interactive=False, elem_id="per-item", min_width=520
        )
        batches = gr.Dataframe(label="Per import (round)", interactive=False, elem_id="batches", min_width=560)
    labelers = gr.Dataframe(label="Labelers", interactive=False, elem_id="labelers")
    agreement = gr.Dataframe(
        label="Agreement on items ranked by two labelers or more", interactive=False, elem_id="agreement"
    )
    agreement_note = gr.Markdown(elem_id="agreement-note")
    disagreements = gr.Dataframe(
        label="Items the labelers disagree on most (the 20 lowest; ranks in the items' stored order of responses)",
        interactive=False,
        elem_id="disagreements",
        wrap=True,
        max_height=400,
        column_widths=["12%", "48%", "12%", "28%"],
    )
    flagged = gr.Dataframe(
        label="Flagged items",
        interactive=False,
        elem_id="flagged",
        wrap=True,
        max_height=640,  # the open items come first: the ones to act on are at the top
        column_widths=["10%", "20%", "10%", "10%", "12%", "38%"],
    )
    with gr.Row(equal_height=True):
        flagged_pick = gr.Dropdown([], label="Flagged item", elem_id="flagged-pick", scale=3)
        exclude_btn = gr.Button("Exclude from export", elem_id="exclude-btn", scale=1)
        include_btn = gr.Button("Include again", elem_id="include-btn", scale=1)
        reviewed_btn = gr.Button("Mark reviewed", elem_id="reviewed-btn", scale=1)
    review_out = gr.Markdown(elem_id="review-out")
    with gr.Row(equal_height=True):
        aggregation = gr.Radio(["all", "majority", "drop_contested"], value="all", label="Aggregation")
        include_gold = gr.Checkbox(label="Include gold items")
        export_btn = gr.Button("Export preferences", elem_id="export-btn")
    export_out = gr.Textbox(label="Export", interactive=False, lines=2, elem_id="export-out")
    download = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="download")
    users = gr.Dataframe(label="Users", interactive=False, elem_id="users")
    with gr.Row(equal_height=True):
        new_name = gr.Textbox(label="New user name", elem_id="new-name", scale=2)
        new_role = gr.Radio(["labeler", "admin"], value="labeler", label="Role", scale=1)
        add_btn = gr.Button("Add user", elem_id="add-user-btn", scale=1)
    with gr.Row(equal_height=True):
        user_pick = gr.Dropdown([], label="User", elem_id="user-pick", scale=2)
        disable_btn = gr.Button("Disable", elem_id="disable-btn", scale=1)
        enable_btn = gr.Button("Enable", elem_id="enable-btn", scale=1)
        reset_btn = gr.Button("Reset password", elem_id="reset-btn", scale=1)
    user_out = gr.Textbox(label="User management", interactive=False, elem_id="user-out")
    return AdminTab(
        tab,
        refresh_btn,
        overview,
        per_item,
        batches,
        labelers,
        agreement,
        agreement_note,
        disagreements,
        flagged,
        flagged_pick,
        exclude_btn,
        include_btn,
        reviewed_btn,
        review_out,
        aggregation,
        include_gold,
        export_btn,
        export_out,
        download,
        users,
        new_name,
        new_role,
        add_btn,
        user_pick,
        disable_btn,
        enable_btn,
        reset_btn,
        user_out,
    )


def _layout(guidelines_version: str, guidelines: str, slots: int, beat_seconds: float) -> Page:
    """The components, inside the caller's Blocks: a header row, then the Rank, My rankings and Admin tabs."""
    state, last = gr.State(None), gr.State(None)
    title = (
        f'<div id="title" data-beat="{beat_seconds:g}" data-undo="{UNDO_SECONDS}"><b>Rank the responses</b>, '
        "1 = best.</div>"
    )
    with gr.Row(equal_height=True, elem_id="header"):
        gr.HTML(title, js_on_load=(STATIC / "page.js").read_text(), scale=3)
        progress = gr.Markdown(elem_id="progress", min_height=0)
        help_btn = gr.Button("?", size="sm", scale=0, min_width=40, elem_id="help-btn")
        help_btn.click(None, js="() => window.__labelingHelp && window.__labelingHelp()")
        logout_btn = gr.Button("Log out", size="sm", scale=0, min_width=80, elem_id="logout-btn")
    gr.HTML(help_html(), elem_id="help-box")
    with gr.Tabs() as tabs:
        with gr.Tab("Rank", id="rank"), gr.Column(elem_id="rank-form"):
            hint = gr.HTML(shortcuts_html(0), elem_id="hint", padding=False)
            with gr.Row():
                # The prompt is untrusted text too: a read-only text box shows it literally.
                prompt = gr.Textbox(
                    label="Prompt", interactive=False, lines=2, max_lines=10, elem_id="prompt", scale=3
                )
                with (
                    gr.Column(scale=1, min_width=200),
                    gr.Accordion(f"Guidelines (version {guidelines_version})", open=False),
                ):
                    gr.Markdown(guidelines, elem_id="guidelines")
            with gr.Row(elem_id="responses"):
                slot_list = [_slot(i, LETTERS[i], slots) for i in range(slots)]
            with gr.Row(equal_height=True):
                none_ok = gr.Checkbox(label="None is acceptable (N)", elem_id="none-ok", scale=1, min_width=180)
                comment = gr.Textbox(label="Comment, optional (M)", lines=1, max_lines=3, scale=4, elem_id="comment")
            # Fixed to the bottom of the window, at a fixed height (static/page.css): Submit and Skip never scroll
            # away, and every part of the bar has a reserved height, so no message, clock tick or draft note moves
            # anything. The skip reason stays one line (a long reason scrolls sideways).
            with gr.Row(equal_height=True, elem_id="action-bar"):
                submit_btn = gr.Button(
                    "Submit ranking", variant="primary", elem_id="submit-btn", scale=0, min_width=150
                )
                skip_reason = gr.Textbox(
                    show_label=False,
                    placeholder="Skip reason (why you cannot judge it)",
                    container=False,
                    max_lines=1,
                    scale=1,
                    min_width=160,
                    elem_id="skip-reason",
                )
                skip_btn = gr.Button("Skip item", elem_id="skip-btn", scale=0, min_width=100)
                undo_btn = gr.Button("Undo submit", interactive=False, elem_id="undo-btn", scale=0, min_width=110)
                status = gr.Markdown(elem_id="status", min_height=0, scale=3, min_width=200)
                with gr.Column(min_width=140, scale=0, elem_id="clock-box"):
                    gr.HTML('<span id="clock"></span>', elem_id="clock-line", padding=False)
                    draft_note = gr.Markdown(elem_id="draft-note", min_height=0)
            item_key = gr.Textbox("loading", visible="hidden", elem_id="item-key")
            fetch_btn = gr.Button("Get an item", visible="hidden", elem_id="fetch-btn")
            draft_btn = gr.Button("Save draft", visible="hidden", elem_id="draft-btn")
            wait_timer = gr.Timer(beat_seconds, active=False)
            undo_timer = gr.Timer(UNDO_SECONDS, active=False)
        with gr.Tab("My rankings", id="mine"):
            recent = gr.Dropdown([], label="Your recent rankings (newest first)", elem_id="recent")
            edit_btn = gr.Button("Load to edit (saving makes a new version)", elem_id="edit-btn")
        with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
            admin = _admin_tab(admin_tab)
    form = RankForm(
        state,
        last,
        status,
        progress,
        hint,
        prompt,
        slot_list,
        none_ok,
        comment,
        skip_reason,
        submit_btn,
        skip_btn,
        undo_btn,
        item_key,
        fetch_btn,
        draft_btn,
        draft_note,
        wait_timer,
        undo_timer,
    )
    return Page(tabs, logout_btn, form, MyRankings(recent, edit_btn), admin)


# --- the events ---------------------------------------------------------------------------------------------------


class Events:
    """The page's event handlers. Each reads the login from ``request`` and returns {component: update}; a
    component left out of the answer keeps what it shows."""

    def __init__(self, service: LabelingService, page: Page):
        self.service, self.page, self.form = service, page, page.form
        self.slots = len(page.form.slots)

    def user(self, request: gr.Request) -> str:
        username = getattr(request, "username", None)
        if not username or self.service.role(username) is None:
            raise gr.Error("You are not logged in, or your account was disabled. Reload the page and log in.")
        return username

    def admin_user(self, request: gr.Request) -> str:
        username = self.user(request)
        if self.service.role(username) != "admin":
            raise gr.Error("Only admins can do this.")
        return username

    # --- showing an item ---

    def render(
        self,
        username: str,
        view: ItemView | None,
        message: str,
        ranking: dict | None = None,
        edits: int | None = None,
        held_by_others: int = 0,
        progress: tuple[int, int] | None = None,
        restored: bool = False,
    ) -> dict:
        """The form showing ``view``, prefilled with ``ranking`` (the version being edited, or the labeler's draft:
        ``restored``), or saying why there is nothing to rank. The draft note is the shown item's own."""
        form, ranking = self.form, ranking or {}
        candidates = view.candidates if view is not None else []
        k = len(candidates)
        too_many = k > self.slots
        done, total = progress or self.service.progress(username)
        updates = {
            form.status: message,
            form.progress: f"**{done} done** of {total}",
            form.hint: shortcuts_html(0 if too_many else k),
            form.none_ok: bool(ranking.get("none_acceptable")),
            form.comment: ranking.get("comment", ""),
            form.skip_reason: "",
            form.draft_note: DRAFT_RESTORED if restored else "",
            form.submit_btn: gr.Button(interactive=view is not None and not too_many),
            form.wait_timer: gr.Timer(active=view is None and held_by_others > 0),
        }
        if view is None:
            if held_by_others:
                text = (
                    f"Others are working on the last {held_by_others} item{'s' if held_by_others > 1 else ''}; "
                    "this page checks again every few seconds, and shows one if it is handed back."
                )
            else:
                text = "Nothing left to rank for you. Thank you!"
            updates |= {form.state: None, form.prompt: gr.Textbox(value=text, label="Prompt"), form.item_key: "none"}
        else:
            state = {
                "item_id": view.item_id,
                "order": [cid for cid, _ in candidates],
                "submission_id": uuid.uuid4().hex,
                "shown_at": time.time(),
                "edits": edits,
            }
            label = f"Prompt (editing your ranking, version {edits})" if edits else "Prompt"
            updates |= {
                form.state: state,
                # Bidirectional controls shown as [U+202E] and the like: no invisible character reorders the text.
                form.prompt: gr.Textbox(value=show_bidi_controls(view.prompt), label=label),
                form.item_key: f"edit:{view.item_id}" if edits else view.item_id,
            }
            if too_many:
                updates[form.status] = (
                    f"**This item has {k} responses; this page shows at most {self.slots}.** Skip it (the reason "
                    "is filled in), and tell an admin: it should not have been imported."
                )
                updates[form.skip_reason] = f"The page cannot show {k} responses (at most {self.slots})."
        ranks, flags = ranking.get("ranks", {}), ranking.get("flags", {})
        shown = 0 if too_many else k
        for i, slot in enumerate(form.slots):
            cid, text = candidates[i] if i < shown else (None, "")
            updates[slot.column] = gr.Column(visible=i < shown)
            updates[slot.text] = show_bidi_controls(text)
            updates[slot.rank] = gr.Radio(choices=list(range(1, shown + 1)), value=ranks.get(cid))
            updates[slot.flags] = flags.get(cid, [])
        return updates

    def show_next(self, username: str, message: str, got: Assigned | None = None) -> dict:
        """The labeler's item in hand (with its draft), or why there is none; ``got``: handed out already."""
        got = got or self.service.assign(username)
        draft = got.draft
        progress = (got.done, got.total)
        restored = bool(draft and (draft["ranks"] or draft["flags"] or draft["comment"] or draft["none_acceptable"]))
        return self.render(
            username, got.view, message, draft, held_by_others=got.held_by_others, progress=progress, restored=restored
        )

    def recent_choices(self, username: str) -> dict:
        choices = [
            (
                f"{r['created_at'][:16].replace('T', ' ')} | v{r['version']} | "
                + show_bidi_controls(" ".join(r["prompt"].split())[:80]),
                r["item_id"],
            )
            for r in self.service.recent(username)
        ]
        return {self.page.mine.recent: gr.Dropdown(choices=choices, value=None)}

    def on_load(self, request: gr.Request) -> dict:
        """A labeler gets their item at once; an admin starts on the Admin tab and holds nothing until they open
        the Rank tab."""
        username = self.user(request)
        is_admin = self.service.role(username) == "admin"
        if is_admin:
            hello = f"Logged in as **{username}**, an admin."
            waiting = "Open this tab to rank: an item is held for you only while it is on screen."
            shown = self.render(username, None, hello) | {
                self.form.prompt: gr.Textbox(value=waiting),
                self.form.item_key: "",
            }
        else:
            shown = self.show_next(username, f"Logged in as **{username}**.")
        tabs = gr.Tabs(selected="admin" if is_admin else "rank")
        return {
            **shown,
            **self.recent_choices(username),
            self.page.admin.tab: gr.Tab(visible=is_admin),
            self.page.tabs: tabs,
        }

    def on_fetch(self, state: dict | None, request: gr.Request) -> dict:
        """The Rank tab is on screen and holds nothing yet (an admin's first visit): hand out an item."""
        if state:
            return {}
        username = self.user(request)
        return self.show_next(username, "")

    def on_wait(self, state: dict | None, request: gr.Request) -> dict:
        """While others hold the last items: check again (the timer stops once an item or the end is shown)."""
        if state:
            return {self.form.wait_timer: gr.Timer(active=False)}
        return self.show_next(self.user(request), "")

    # --- what the labeler does ---

    def in_hand(self, username: str, state: dict | None, item_key: str | None) -> dict | None:
        """The page's state of the item it shows. A restart of the server forgets it (Gradio keeps a session's state
        in memory) while the page still shows the item, whose id the page holds (``item_key``): then the state is
        rebuilt from the store, if the item is still the labeler's: in hand, or their ranking being edited. The
        time spent counts from here, and the page's submission id is new (the store knows whether it was saved)."""
        if state or not item_key or item_key in ("none", "loading"):
            return state
        if item_key.startswith("edit:"):
            found = self.service.for_edit(username, item_key.removeprefix("edit:"))
            view, edits = (found[0], found[1]["version"]) if found else (None, None)
        else:
            view, edits = self.service.view_in_hand(username, item_key), None
        if view is None or view.item_id != item_key.removeprefix("edit:"):
            return None
        order = [cid for cid, _ in view.candidates]
        return {
            "item_id": view.item_id,
            "order": order,
            "submission_id": uuid.uuid4().hex,
            "shown_at": time.time(),
        } | ({"edits": edits} if edits else {})

    def _submission(self, values: dict) -> Submission:
        form, state = self.form, values[self.form.state]
        slots = dict(zip(state["order"], form.slots, strict=False))  # the item's K candidates fill the first slots
        return Submission(
            submission_id=state["submission_id"],
            item_id=state["item_id"],
            ranks={cid: values[slot.rank] for cid, slot in slots.items()},
            none_acceptable=bool(values[form.none_ok]),
            flags={cid: values[slot.flags] for cid, slot in slots.items() if values[slot.flags]},
            comment=values[form.comment] or "",
            seconds_spent=round(time.time() - state["shown_at"], 1),
            display_order=state["order"],
        )

    def on_submit(self, values: dict, request: gr.Request) -> dict:
        username, form = self.user(request), self.form
        state = values[form.state] = self.in_hand(username, values[form.state], values[form.item_key])
        if not state:
            return {**self.show_next(username, "Nothing to submit."), **self.recent_choices(username)}
        edits = state.get("edits")
        result, got = self.service.submit_and_next(username, self._submission(values), edits)
        if not result["ok"] and not result["stale"]:  # keep the form (and its submission id): fix and resubmit
            return {form.status: f"**Not saved.** {result['message']}"}
        if not result["ok"]:  # out of date: never turned into an edit; show what the labeler holds now
            return {**self.show_next(username, f"**Not saved.** {result['message']}"), **self.recent_choices(username)}
        message = result["message"]
        undo = {}
        if result["created"] and not edits:
            message += UNDO_HINT
            last = {"item_id": state["item_id"], "version": result["version"], "at": time.time()}
            undo = {
                form.last: last,
                form.undo_btn: gr.Button(interactive=True),
                form.undo_timer: gr.Timer(active=True),
            }
        return {**self.show_next(username, message, got), **self.recent_choices(username), **undo}

    def on_undo(self, last: dict | None, request: gr.Request) -> dict:
        """Reopen the ranking just submitted, to edit: what the labeler saves then is a new version of it."""
        username, form = self.user(request), self.form
        closed = {
            form.last: None,
            form.undo_btn: gr.Button(interactive=False),
            form.undo_timer: gr.Timer(active=False),
        }
        if not last or time.time() - last["at"] > UNDO_SECONDS + 5:
            return {**closed, form.status: "Too late to undo: change that ranking from the My rankings tab."}
        found = self.service.for_edit(username, last["item_id"])
        if found is None or found[1]["version"] != last["version"]:
            return {**closed, form.status: "That ranking changed meanwhile: open it from the My rankings tab."}
        view, ranking = found
        message = (
            f"Undone: your last ranking is back to change (version {ranking['version']}). Submit saves the change as "
            "a new version; your next item waits."
        )
        return {**closed, **self.render(username, view, message, ranking, edits=ranking["version"])}

    def on_undo_expired(self, status: str | None) -> dict:
        """The Undo window closed: the button goes, and so does the hint, if the status line still shows it."""
        form = self.form
        hint = {form.status: status.replace(UNDO_HINT, "")} if status and UNDO_HINT in status else {}
        return {form.undo_btn: gr.Button(interactive=False), form.undo_timer: gr.Timer(active=False), **hint}

    def on_skip(self, state: dict | None, reason: str | None, item_key: str | None, request: gr.Request) -> dict:
        username = self.user(request)
        state = self.in_hand(username, state, item_key)
        if not state:
            return {self.form.status: gr.skip()}
        if state.get("edits"):
            return {self.form.status: "**Not skipped.** You are editing a ranking: submit it, or reload the page."}
        result = self.service.skip(username, state["submission_id"], state["item_id"], reason or "")
        if not result["ok"] and not result["stale"]:
            return {self.form.status: f"**Not skipped.** {result['message']}"}
        prefix = "" if result["ok"] else "**Not skipped.** "
        return self.show_next(username, prefix + result["message"])

    def on_draft(self, values: dict, request: gr.Request) -> dict:
        """Keep the labeler's unfinished ranks, flags and comment (static/page.js sends them after a pause)."""
        username, form = self.user(request), self.form
        state = values[form.state] = self.in_hand(username, values[form.state], values[form.item_key])
        if not state or state.get("edits"):
            return {form.draft_note: gr.skip()}
        submission = self._submission(values)
        draft = {
            "ranks": {cid: rank for cid, rank in submission.ranks.items() if rank is not None},
            "flags": submission.flags,
            "none_acceptable": submission.none_acceptable,
            "comment": submission.comment,
        }
        result = self.service.save_draft(username, state["item_id"], draft)
        if not result["ok"]:
            return {form.draft_note: gr.skip()}
        return {form.draft_note: f"Draft saved {time.strftime('%H:%M:%S')}"}

    def page_draft(
        self, username: str, item_id: str, ranks: str, flags: str, none_acceptable: bool, comment: str
    ) -> dict:
        """The draft static/page.js sends as the page goes away: ``ranks`` and ``flags`` as JSON lists, one entry per
        response in the order shown (a rank or null; the indices of the ticked flags). {ok}"""
        view = self.service.view_in_hand(username, item_id or "")
        try:
            shown_ranks, shown_flags = json.loads(ranks), json.loads(flags)
        except ValueError:
            return {"ok": False}
        if view is None or not isinstance(shown_ranks, list) or not isinstance(shown_flags, list):
            return {"ok": False}
        order = [cid for cid, _ in view.candidates]
        draft = {
            "ranks": {cid: r for cid, r in zip(order, shown_ranks, strict=False) if isinstance(r, int)},
            "flags": {
                cid: [FLAGS[j] for j in ticked if isinstance(j, int) and 0 <= j < len(FLAGS)]
                for cid, ticked in zip(order, shown_flags, strict=False)
                if isinstance(ticked, list) and ticked
            },
            "none_acceptable": bool(none_acceptable),
            "comment": str(comment or ""),
        }
        return {"ok": self.service.save_draft(username, view.item_id, draft)["ok"]}

    def on_edit(self, item_id: str | None, request: gr.Request) -> dict:
        username = self.user(request)
        found = self.service.for_edit(username, item_id) if item_id else None
        if found is None:
            return {self.form.status: "Pick one of your rankings first."}
        view, ranking = found
        message = f"Editing your ranking (version {ranking['version']}): change it and submit to save a new version."
        shown = self.render(username, view, message, ranking, edits=ranking["version"])
        return {**shown, self.page.tabs: gr.Tabs(selected="rank")}

    def on_logout(self, state: dict | None, request: gr.Request) -> None:
        """Before the page goes to /logout: the item on it is free for others at once."""
        if state and not state.get("edits"):
            self.service.release(self.user(request), state["item_id"])

    # --- the admin tab ---

    def on_refresh(self, request: gr.Request) -> dict:
        try:
            username = self.user(request)
            report = self.service.admin_report(username)
            users = self.service.users(username)
        except PermissionError as error:
            raise gr.Error(str(error)) from error
        admin = self.page.admin
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
            return {**self.on_refresh(request), self.page.admin.review_out: message}

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
        return {self.page.admin.export_out: text, self.page.admin.download: files}

    def on_user(self, action: str):
        def handler(name: str | None, role: str | None, request: gr.Request) -> dict:
            username, service = self.admin_user(request), self.service
            name = (name or "").strip()
            if not name:
                return {self.page.admin.user_out: "Name a user first."}
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
            return {**self.on_refresh(request), self.page.admin.user_out: message}

        return handler


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
    """The page's actions for programs, behind the same login: ``/next_item``, ``/submit``, ``/edit``, ``/skip``,
    and the lease routes the page's script calls, ``/heartbeat`` and ``/release``."""

    def next_item(request: gr.Request) -> dict | None:
        """The caller's item in hand {item_id, prompt, candidates: [{id, text}], done, total}, or null."""
        return service.next_item(events.user(request))

    def _submission(submission_id, item_id, ranks, none_acceptable, flags, comment, seconds_spent) -> Submission:
        parsed_ranks, parsed_flags = _json_object(ranks, "ranks"), _json_object(flags or "{}", "flags")
        return Submission(
            submission_id=submission_id,
            item_id=item_id,
            ranks=parsed_ranks,
            none_acceptable=bool(none_acceptable),
            flags=parsed_flags,
            comment=comment or "",
            seconds_spent=seconds_spent,
        )

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
        """Rank the item in hand (from /next_item). ranks: JSON {candidate_id: rank} (1 = best, ties share a rank);
        flags: JSON {candidate_id: [flag, ...]}. Returns {ok, created, version, message, stale}; a retried
        submission_id stores nothing new; an item ranked already or not in hand is refused (stale)."""
        username = events.user(request)
        try:
            submission = _submission(submission_id, item_id, ranks, none_acceptable, flags, comment, seconds_spent)
        except ValueError as error:
            return {"ok": False, "created": False, "version": None, "message": str(error), "stale": False}
        return service.submit(username, submission)

    def edit(
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
        username = events.user(request)
        try:
            submission = _submission(submission_id, item_id, ranks, none_acceptable, flags, comment, None)
            version = int(edits_version)
        except (TypeError, ValueError) as error:
            return {"ok": False, "created": False, "version": None, "message": str(error), "stale": False}
        return service.submit(username, submission, version)

    def skip(submission_id: str, item_id: str, reason: str, request: gr.Request = None) -> dict:
        """Pass on the item in hand with a reason; it goes to other labelers. Returns {ok, message, stale}."""
        return service.skip(events.user(request), submission_id, item_id, reason)

    def heartbeat(item_id: str, request: gr.Request = None) -> dict:
        """The item is still on screen: hold it longer. Returns {ok}; false when it is not in hand any more."""
        return service.heartbeat(events.user(request), item_id)

    def release(item_id: str, request: gr.Request = None) -> dict:
        """The page with the item closed: others may be given it now. Returns {ok}."""
        return service.release(events.user(request), item_id)

    def draft(
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
        return events.page_draft(events.user(request), item_id, ranks, flags, none_acceptable, comment)

    for route in (next_item, submit, edit, skip, heartbeat, release, draft):
        gr.api(timing.timed(route.__name__, route), api_name=route.__name__)


# --- the whole page -----------------------------------------------------------------------------------------------


def build_page(service: LabelingService) -> gr.Blocks:
    """The Blocks app: the labeler's page, the admin tab and the API routes; ``labeling_ui.server`` serves it behind
    the login. A double click on a button that changes labels runs its event once."""
    config = service.config
    with gr.Blocks(title="Rank the responses", analytics_enabled=False, fill_width=True) as blocks:
        page = _layout(config.guidelines_version, config.guidelines, config.max_candidates, config.lease_seconds / 4)
        events = Events(service, page)
        form, mine, admin = page.form, page.mine, page.admin
        once = {"trigger_mode": "once", **PRIVATE}
        shown_and_recent = [*form.shown(), mine.recent]
        submitted = [*shown_and_recent, form.last, form.undo_btn, form.undo_timer]
        blocks.load(
            timing.timed("on_load", events.on_load), None, [*shown_and_recent, admin.tab, page.tabs], **PRIVATE
        )
        # Not the Rank tab's select event: Gradio fires it as the page starts, before `on_load` has answered.
        form.fetch_btn.click(events.on_fetch, form.state, form.shown(), **once)
        form.submit_btn.click(timing.timed("on_submit", events.on_submit), form.answers(), submitted, **once)
        form.skip_btn.click(events.on_skip, [form.state, form.skip_reason, form.item_key], form.shown(), **once)
        form.undo_btn.click(events.on_undo, form.last, submitted, **once)
        form.undo_timer.tick(
            events.on_undo_expired, form.status, [form.undo_btn, form.undo_timer, form.status], **PRIVATE
        )
        form.wait_timer.tick(events.on_wait, form.state, form.shown(), **PRIVATE)
        form.draft_btn.click(events.on_draft, form.answers(), form.draft_note, trigger_mode="always_last", **PRIVATE)
        mine.edit_btn.click(events.on_edit, mine.recent, [*form.shown(), page.tabs], **once)
        page.logout_btn.click(events.on_logout, form.state, None, **PRIVATE).then(
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
        admin.refresh_btn.click(events.on_refresh, None, tables, **PRIVATE)
        admin.tab.select(events.on_refresh, None, tables, **PRIVATE)
        for button, action in (
            (admin.exclude_btn, "exclude"),
            (admin.include_btn, "include"),
            (admin.reviewed_btn, "reviewed"),
        ):
            button.click(events.on_review(action), admin.flagged_pick, [*tables, admin.review_out], **once)
        admin.export_btn.click(
            events.on_export, [admin.aggregation, admin.include_gold], [admin.export_out, admin.download], **once
        )
        admin.add_btn.click(events.on_user("add"), [admin.new_name, admin.new_role], [*tables, admin.user_out], **once)
        for button, action in (
            (admin.disable_btn, "disable"),
            (admin.enable_btn, "enable"),
            (admin.reset_btn, "reset"),
        ):
            button.click(events.on_user(action), [admin.user_pick, admin.new_role], [*tables, admin.user_out], **once)
        _api_routes(service, events)
    return blocks
