"""The page's components: the Gradio layout of the Rank, My rankings and Admin tabs, grouped in small named
dataclasses so that a handler names the component it updates (``{component: update}``) and nothing depends on the
position of a component in a list.

Keyboard shortcuts, the help overlay, the clock, draft saving and lease renewal are in ``static/page.js``, which the
page's header runs; styles (the sticky action bar, the response grid) in ``static/page.css``.
"""

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from labeling_ui.config import PAGE_SLOTS
from labeling_ui.rules import FLAGS

STATIC = Path(__file__).resolve().parent / "static"
LETTERS = "ABCDEFGH"[:PAGE_SLOTS]
FLAG_LABELS = {
    "unsafe": "unsafe",
    "private_data": "private data",
    "factually_wrong": "factually wrong",
    "off_topic": "off-topic",
}
FLAG_KEYS = {"unsafe": "U", "private_data": "P", "factually_wrong": "W", "off_topic": "O"}  # as in static/page.js
UNDO_SECONDS = 10  # the Undo button stays for this long after a submit; the server allows 5 s more (a slow click)


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
        """Every component ``LabelerEvents.render`` sets when it shows an item."""
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


def build_layout(guidelines_version: str, guidelines: str, slots: int, beat_seconds: float) -> Page:
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
