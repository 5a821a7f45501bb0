"""The ranking app: ``python -m labeling_ui serve --run R`` (``make label``), a Gradio app behind a login.

Labelers rank the K responses of an item (1 = best, ties allowed), may flag responses, say none is acceptable, comment,
skip with a reason, and edit their recent rankings (an edit is a new version). Admins also get a tab with per-labeler
statistics, agreement, the flagged items and the export. The same actions are API endpoints for ``gradio_client``
(``/next_item``, ``/submit``, ``/skip``), used by the simulated labelers and the load tests.

Everything a user does goes through ``LabelingService``, which takes the user name: the web page, the API and the
in-process simulation (``labeling_ui.simulate``) share that one code path. Gradio is imported only by ``build_app``
and ``serve``, so the CLI's other commands and the simulation start without it (and nothing here imports torch).
"""

import argparse
import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labeling_ui.cli import add_common_arguments, db_url
from labeling_ui.store import FLAGS, ItemView, LabelStore, RankingError
from labeling_ui.users import generate_password

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "labeling.yaml"
ADMIN = "admin"  # the admin created on the first run, when the database has none
MAX_CANDIDATES = 8  # response slots on the page (letters A-H); items have K of them, K = 4 in the demo
CONCURRENCY = 32  # events handled at once: 16-64 concurrent clients are served without queueing for long
RECENT = 20  # own rankings listed for editing
FLAG_LABELS = {
    "unsafe": "unsafe",
    "private_data": "private data",
    "factually_wrong": "factually wrong",
    "off_topic": "off-topic",
}


@dataclass
class LabelingConfig:
    """configs/labeling.yaml: the guidelines, how items are handed out, where the app listens, simulated labelers."""

    guidelines_version: str = "1"
    guidelines: str = "Rank the responses from 1 (best) to the number of responses (worst)."
    overlap: int = field(default=2, metadata={"help": "Labelers per regular item."})
    gold_rate: float = field(default=0.1, metadata={"help": "Share of each labeler's items that are gold items."})
    seed: int = field(default=0, metadata={"help": "Fixes display orders and the simulated labelers' noise."})
    host: str = "127.0.0.1"
    port: int = 7860
    rubric: str = field(
        default="pipeline.demo.data:house_style_score",
        metadata={"help": "Simulated labelers' scoring function, module:function(prompt, response) -> float."},
    )
    noise: list[float] = field(
        default_factory=lambda: [0.05, 0.15],
        metadata={"help": "Simulated labelers' noise sigmas, one labeler per level by default."},
    )

    def __post_init__(self):
        if not 0 < len(self.guidelines_version) <= 64:
            raise ValueError("guidelines_version must be 1 to 64 characters: it is stored with every ranking.")
        if self.overlap < 1:
            raise ValueError(f"overlap must be at least 1 (labelers per item), got {self.overlap}.")
        if not 0 <= self.gold_rate < 1:
            raise ValueError(f"gold_rate must be in [0, 1), got {self.gold_rate}.")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}.")
        if self.rubric.count(":") != 1:
            raise ValueError(f"rubric must read module:function, got {self.rubric!r}.")
        if not self.noise or any(sigma < 0 for sigma in self.noise):
            raise ValueError(f"noise must list one or more sigmas >= 0, got {self.noise}.")


def load_config(path: str | Path | None = None) -> LabelingConfig:
    """The YAML at ``path`` (default configs/labeling.yaml) as a LabelingConfig; unknown keys are an error."""
    path = Path(path or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"No labeling config at {path}: pass --config configs/labeling.yaml.")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(LabelingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; the keys are: {', '.join(sorted(known))}.")
    return LabelingConfig(**raw)


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
    """What a logged-in user can do; every method takes the user name that the login established."""

    def __init__(self, store: LabelStore, config: LabelingConfig, export_config: Any = None):
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

    def submit(
        self,
        username: str,
        submission_id: str,
        item_id: str,
        ranks: dict[str, Any],
        *,
        none_acceptable: bool = False,
        flags: dict[str, list[str]] | None = None,
        comment: str = "",
        seconds_spent: float | None = None,
        display_order: list[str] | None = None,
    ) -> dict[str, Any]:
        """Store a ranking: {ok, created, version, message}. A refused ranking is ok=False with what to fix."""
        try:
            result = self.store.submit_ranking(
                username,
                submission_id,
                item_id,
                ranks,
                none_acceptable=none_acceptable,
                flags=flags,
                comment=comment,
                guidelines_version=self.config.guidelines_version,
                display_order=display_order,
                seconds_spent=seconds_spent,
            )
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
        return {
            "labelers": self.store.labeler_stats(),
            "agreement": self.store.agreement(),
            "flagged": self.store.flagged_items(),
        }

    def export(self, username: str | None, aggregation: str = "all", include_gold: bool = False) -> dict[str, Any]:
        """Run labeling_ui.export for this run; returns its summary (metrics and the files written)."""
        from labeling_ui.export import main

        self.require_admin(username)
        if self.export_config is None:
            raise PermissionError("This app was started without an export target.")
        return main(dataclasses.replace(self.export_config, aggregation=aggregation, include_gold=include_gold))


def ensure_admin(store: LabelStore) -> str | None:
    """Create the user 'admin' with a generated password when the database has no admin; return that password."""
    if any(u["role"] == "admin" for u in store.list_users()):
        return None
    password = generate_password()
    try:
        store.add_user(ADMIN, password, role="admin")
    except ValueError as error:
        raise ValueError(
            f"The database has no admin and the name {ADMIN!r} is taken: add one with "
            "`python -m labeling_ui users add NAME --role admin`."
        ) from error
    return password


# ---------------------------------------------------------------------------------------------------------------
# The web page
# ---------------------------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGH"[:MAX_CANDIDATES]

SHORTCUTS = """<div id="title"><b>Rank the responses</b>, 1 = best.</div><div id="shortcuts">Keys: <kbd>A</kbd>-<kbd>D</kbd>
select a response &middot; <kbd>1</kbd>-<kbd>4</kbd> rank it, select the next &middot; <kbd>Ctrl</kbd>+<kbd>Enter</kbd>
submit &middot; <kbd>Alt</kbd>+<kbd>S</kbd> skip</div>"""

# Registered once per page. Letters and digits act only outside text fields; Ctrl+Enter and Alt+S work everywhere.
# A rank is set by clicking the response's radio button, so Gradio sees exactly what a mouse click would give it.
KEYS_JS = """
if (!window.__labelingKeys) {
  window.__labelingKeys = true;
  let selected = 0, lastPrompt = null;
  const cards = () => [...document.querySelectorAll('.candidate')].filter((c) => c.offsetParent !== null);
  const select = (i) => {
    const all = cards();
    if (!all.length) return;
    selected = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((c, j) => c.classList.toggle('selected', j === selected));
  };
  const click = (id) => { const b = document.getElementById(id); if (b && !b.disabled) b.click(); };
  document.addEventListener('mousedown', (e) => {
    const card = e.target.closest && e.target.closest('.candidate');
    if (card) select(cards().indexOf(card));
  });
  document.addEventListener('keydown', (e) => {
    const prompt = document.querySelector('#prompt textarea');
    if (prompt && prompt.value !== lastPrompt) { lastPrompt = prompt.value; select(0); }
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); click('submit-btn'); return; }
    if (e.altKey && e.code === 'KeyS') { e.preventDefault(); click('skip-btn'); return; }
    const t = e.target;
    const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
      (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)));
    if (typing || e.ctrlKey || e.metaKey || e.altKey || e.key.length !== 1) return;
    const all = cards();
    const letter = 'abcdefgh'.indexOf(e.key.toLowerCase());
    if (letter >= 0 && letter < all.length) { e.preventDefault(); select(letter); return; }
    if (/^[1-9]$/.test(e.key) && all[selected]) {
      const radio = all[selected].querySelector(`input[type=radio][value="${e.key}"]`);
      if (radio) { e.preventDefault(); radio.click(); select(selected + 1); }
    }
  });
}
"""

CSS = """
.candidate { border-radius: 8px; padding: 2px; }
.candidate.selected { outline: 3px solid var(--color-accent); }
#shortcuts { font-size: 0.8em; }
#shortcuts kbd { border: 1px solid var(--border-color-primary); border-radius: 3px; padding: 0 4px; }
#progress { text-align: right; }
.candidate label[data-testid$="-radio-label"] { padding: 4px 6px !important; }
.candidate .wrap { gap: 4px !important; }
"""


def build_app(service: LabelingService) -> Any:
    """The Gradio Blocks app: the labeler's page, the admin tab and the API endpoints, all behind the login."""
    import gradio as gr
    import pandas as pd

    config = service.config

    def user(request: gr.Request) -> str:
        username = getattr(request, "username", None)
        if not username or service.role(username) is None:
            raise gr.Error("You are not logged in, or your account was disabled. Reload the page and log in.")
        return username

    with gr.Blocks(title="Rank the responses", analytics_enabled=False, fill_width=True) as demo:
        form = gr.State(None)  # the item on the page: id, candidate order, this form's submission id, when shown
        with gr.Row():
            gr.HTML(SHORTCUTS, js_on_load=KEYS_JS, scale=3)
            status = gr.Markdown(elem_id="status", min_height=0)
            progress = gr.Markdown(elem_id="progress", min_height=0)
            gr.Button("Log out", link="/logout", size="sm", scale=0, min_width=80)
        with gr.Tabs() as tabs:
            with gr.Tab("Rank", id="rank"):
                columns, texts, ranks, flags = [], [], [], []
                with gr.Row():
                    with gr.Column(scale=1, min_width=240):
                        # Prompt and responses are untrusted text: read-only text boxes show them literally (never
                        # as HTML or markdown), and a script in them is just characters.
                        prompt = gr.Textbox(
                            label="Prompt", interactive=False, lines=11, max_lines=11, elem_id="prompt"
                        )
                        with gr.Accordion(f"Guidelines (version {config.guidelines_version})", open=False):
                            gr.Markdown(config.guidelines, elem_id="guidelines")
                    for i, letter in enumerate(LETTERS):
                        with gr.Column(
                            scale=1, min_width=220, elem_id=f"cand-{i}", elem_classes="candidate"
                        ) as column:
                            texts.append(
                                gr.Textbox(
                                    label=f"Response {letter}",
                                    interactive=False,
                                    lines=9,
                                    max_lines=9,
                                    elem_id=f"text-{i}",
                                )
                            )
                            ranks.append(gr.Radio([], label=f"Rank of {letter}", elem_id=f"rank-{i}"))
                            flags.append(
                                gr.Dropdown(
                                    [(FLAG_LABELS[f], f) for f in FLAGS],
                                    value=[],
                                    multiselect=True,
                                    label=f"Flags of {letter}",
                                    elem_id=f"flags-{i}",
                                )
                            )
                        columns.append(column)
                with gr.Row(equal_height=True):
                    none_ok = gr.Checkbox(label="None is acceptable", elem_id="none-ok", scale=1, min_width=160)
                    comment = gr.Textbox(label="Comment (optional)", max_lines=3, scale=3, elem_id="comment")
                    submit_btn = gr.Button("Submit ranking", variant="primary", elem_id="submit-btn", scale=1)
                    skip_reason = gr.Textbox(
                        label="Skip reason",
                        placeholder="Why you cannot judge this item",
                        scale=2,
                        elem_id="skip-reason",
                    )
                    skip_btn = gr.Button("Skip item", elem_id="skip-btn", scale=1, min_width=100)
            with gr.Tab("My rankings", id="mine"):
                recent = gr.Dropdown([], label="Your recent rankings (newest first)", elem_id="recent")
                edit_btn = gr.Button("Load to edit (saving makes a new version)", elem_id="edit-btn")
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                refresh_btn = gr.Button("Refresh", size="sm")
                stats = gr.Dataframe(label="Labelers", interactive=False, elem_id="labelers")
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

        # --- the labeler's page -------------------------------------------------------------------------------

        page = [form, status, progress, prompt, *columns, *texts, *ranks, *flags, none_ok, comment, skip_reason]

        def render(username: str, view: ItemView | None, message: str, ranking: dict | None = None) -> list:
            """Updates of ``page`` showing ``view`` (prefilled with ``ranking`` when editing it)."""
            done, total = service.progress(username)
            updates: list[Any] = []
            if view is None:
                updates += [
                    None,
                    message,
                    f"**{done} done** of {total}",
                    gr.Textbox(value="Nothing left to rank for you. Thank you!", label="Prompt"),
                ]
                candidates: list[tuple[str, str]] = []
            else:
                state = {
                    "item_id": view.item_id,
                    "order": [cid for cid, _ in view.candidates],
                    "submission_id": uuid.uuid4().hex,
                    "shown_at": time.time(),
                }
                label = f"Prompt (editing your ranking, version {ranking['version']})" if ranking else "Prompt"
                updates += [state, message, f"**{done} done** of {total}", gr.Textbox(value=view.prompt, label=label)]
                candidates = view.candidates
            if len(candidates) > MAX_CANDIDATES:
                raise gr.Error(f"This item has {len(candidates)} responses; the page shows at most {MAX_CANDIDATES}.")
            k = len(candidates)
            updates += [gr.Column(visible=i < k) for i in range(MAX_CANDIDATES)]
            updates += [candidates[i][1] if i < k else "" for i in range(MAX_CANDIDATES)]
            stored = (ranking or {}).get("ranks", {})
            updates += [
                gr.Radio(choices=list(range(1, k + 1)), value=stored.get(candidates[i][0]) if i < k else None)
                for i in range(MAX_CANDIDATES)
            ]
            stored_flags = (ranking or {}).get("flags", {})
            updates += [stored_flags.get(candidates[i][0], []) if i < k else [] for i in range(MAX_CANDIDATES)]
            updates += [bool((ranking or {}).get("none_acceptable")), (ranking or {}).get("comment", ""), ""]
            return updates

        def recent_choices(username: str) -> Any:
            choices = [
                (
                    f"{r['created_at'][:16].replace('T', ' ')} | v{r['version']} | {' '.join(r['prompt'].split())[:80]}",
                    r["item_id"],
                )
                for r in service.recent(username)
            ]
            return gr.Dropdown(choices=choices, value=None)

        def on_load(request: gr.Request):
            username = user(request)
            is_admin = service.role(username) == "admin"
            view = service.next_view(username)
            hello = f"Logged in as **{username}**." + (" You are an admin: see the Admin tab." if is_admin else "")
            return [*render(username, view, hello), recent_choices(username), gr.Tab(visible=is_admin)]

        def on_submit(request: gr.Request, state, *values):
            username = user(request)
            if not state:
                return [*render(username, service.next_view(username), "Nothing to submit."), recent_choices(username)]
            k = len(state["order"])
            rank_values, flag_values = values[:k], values[MAX_CANDIDATES : MAX_CANDIDATES + k]
            none_acceptable, text = values[2 * MAX_CANDIDATES], values[2 * MAX_CANDIDATES + 1]
            result = service.submit(
                username,
                state["submission_id"],
                state["item_id"],
                dict(zip(state["order"], rank_values, strict=True)),
                none_acceptable=bool(none_acceptable),
                comment=text or "",
                flags={cid: names for cid, names in zip(state["order"], flag_values, strict=True) if names},
                seconds_spent=round(time.time() - state["shown_at"], 1),
                display_order=state["order"],
            )
            if not result["ok"]:  # keep the form (and its submission id) as it is: the labeler fixes and resubmits
                return [gr.skip()] + [f"**Not saved.** {result['message']}"] + [gr.skip()] * (len(page) - 1)
            return [*render(username, service.next_view(username), result["message"]), recent_choices(username)]

        def on_skip(state, reason, request: gr.Request):
            username = user(request)
            if not state:
                return [gr.skip()] * (len(page) + 1)
            result = service.skip(username, state["submission_id"], state["item_id"], reason or "")
            if not result["ok"]:
                return [gr.skip(), f"**Not skipped.** {result['message']}"] + [gr.skip()] * (len(page) - 1)
            return [*render(username, service.next_view(username), result["message"]), gr.skip()]

        def on_edit(item_id, request: gr.Request):
            username = user(request)
            found = service.for_edit(username, item_id) if item_id else None
            if found is None:
                return [gr.skip(), "Pick one of your rankings first."] + [gr.skip()] * (len(page) - 1)
            view, ranking = found
            message = (
                f"Editing your ranking (version {ranking['version']}): change it and submit to save a new version."
            )
            return [*render(username, view, message, ranking), gr.Tabs(selected="rank")]

        private = {"api_visibility": "private"}
        demo.load(on_load, None, [*page, recent, admin_tab], **private)
        submit_btn.click(
            on_submit, [form, *ranks, *flags, none_ok, comment], [*page, recent], trigger_mode="once", **private
        )
        skip_btn.click(on_skip, [form, skip_reason], [*page, recent], trigger_mode="once", **private)
        edit_btn.click(on_edit, recent, [*page, tabs], trigger_mode="once", **private)

        # --- the admin tab ------------------------------------------------------------------------------------

        def on_refresh(request: gr.Request):
            try:
                report = service.admin_report(user(request))
            except PermissionError as error:
                raise gr.Error(str(error)) from error
            labelers = pd.DataFrame(
                [
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
                    for s in report["labelers"]
                ],
                columns=[
                    "labeler",
                    "active",
                    "simulated",
                    "rankings",
                    "skips",
                    "median s/item",
                    "gold items",
                    "gold accuracy",
                ],
            )
            a = report["agreement"]
            agree = pd.DataFrame(
                [
                    [
                        a["n_items"],
                        a["n_labeler_pairs"],
                        _round(a["pairwise_agreement"], 3),
                        _round(a["kendall_tau"], 3),
                        _round(a["krippendorff_alpha"], 3),
                    ]
                ],
                columns=["items", "labeler pairs", "pairwise agreement", "Kendall's tau", "Krippendorff's alpha"],
            )
            rows = []
            for item in report["flagged"]:
                prompt_text = " ".join(item["prompt"].split())[:100]
                rows += [
                    [item["prompt_id"], prompt_text, name, "none acceptable", ""]
                    for name in item["none_acceptable_by"]
                ]
                rows += [
                    [item["prompt_id"], prompt_text, f["username"], ", ".join(f["flags"]), f["response"]]
                    for f in item["flags"]
                ]
                rows += [
                    [item["prompt_id"], prompt_text, c["username"], "comment", c["comment"]] for c in item["comments"]
                ]
            flagged_df = pd.DataFrame(rows, columns=["prompt id", "prompt", "labeler", "flag", "response or comment"])
            return labelers, agree, flagged_df

        def on_export(how, gold, request: gr.Request):
            try:
                summary = service.export(user(request), how, bool(gold))
            except PermissionError as error:
                raise gr.Error(str(error)) from error
            m = summary["metrics"]
            return (
                f"{m['pairs']} pairs from {m['rankings']} rankings of {m['items']} items -> "
                f"{summary['outputs']['preferences.jsonl']} (and .parquet, rankings.jsonl, summary.json)"
            )

        refresh_btn.click(on_refresh, None, [stats, agreement, flagged], **private)
        admin_tab.select(on_refresh, None, [stats, agreement, flagged], **private)
        export_btn.click(on_export, [aggregation, include_gold], export_out, trigger_mode="once", **private)

        # --- the API (gradio_client) --------------------------------------------------------------------------

        def next_item(request: gr.Request) -> dict | None:
            """The caller's current item {item_id, prompt, candidates: [{id, text}], done, total}, or null."""
            return service.next_item(user(request))

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
            username = user(request)
            try:
                parsed_ranks, parsed_flags = _json_object(ranks, "ranks"), _json_object(flags or "{}", "flags")
            except ValueError as error:
                return {"ok": False, "created": False, "version": None, "message": str(error)}
            return service.submit(
                username,
                submission_id,
                item_id,
                parsed_ranks,
                none_acceptable=bool(none_acceptable),
                flags=parsed_flags,
                comment=comment or "",
                seconds_spent=seconds_spent,
            )

        def skip(submission_id: str, item_id: str, reason: str, request: gr.Request = None) -> dict:
            """Pass on an item with a reason; it goes to other labelers. Returns {ok, message}."""
            return service.skip(user(request), submission_id, item_id, reason)

        gr.api(next_item, api_name="next_item")
        gr.api(submit, api_name="submit")
        gr.api(skip, api_name="skip")
    return demo


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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


# ---------------------------------------------------------------------------------------------------------------
# python -m labeling_ui serve
# ---------------------------------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Open the store, make sure an admin exists, start the app and block until it is stopped."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Gradio rebuilds a pandas summary of its last 10,000 events after every event, for a monitoring page this app
    # turns off: at a few events per submit that was a sixth of the server's CPU. Keep it from running.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    import anyio.to_thread
    import gradio as gr

    from labeling_ui.export import ExportConfig

    config = load_config(args.config)
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    url = db_url(args)
    store = LabelStore(url, overlap=config.overlap, gold_rate=config.gold_rate, seed=config.seed)
    try:
        admin_password = ensure_admin(store)
        if admin_password is not None:  # printed at once: a failed start below must not lose it
            print(f"First run: created the admin user. Log in as '{ADMIN}' with password: {admin_password}")
            print("  (shown only now; add labelers with `python -m labeling_ui users add NAME`)", flush=True)
        export_config = ExportConfig(run=args.run, runs_dir=args.runs_dir, db=url)
        service = LabelingService(store, config, export_config)
        demo = build_app(service)

        async def auth(username: str, password: str) -> bool:
            # scrypt takes ~50 ms: hash in a worker thread so logins do not stall the server's event loop.
            return await anyio.to_thread.run_sync(service.authenticate, username, password)

        demo.queue(default_concurrency_limit=CONCURRENCY)
        # Fonts from the system: the default theme fetches Google fonts, which offline machines cannot reach.
        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        try:
            _, local_url, _ = demo.launch(
                server_name=host,
                server_port=port,
                auth=auth,
                auth_message="Log in with the name and password you were given.",
                share=False,
                run_history=False,
                quiet=True,
                prevent_thread_lock=True,
                max_threads=2 * CONCURRENCY,
                ssr_mode=False,
                pwa=False,
                mcp_server=False,
                enable_monitoring=False,
                theme=theme,
                css=CSS,
            )
        except OSError as error:
            raise ValueError(
                f"Cannot listen on {host}:{port}: {error} Pick another port with --port N "
                '(make label ARGS="--port N").'
            ) from error
        print(
            f"Labeling app for run '{args.run}' running at {local_url} (labels: {_shown_url(url)}). Ctrl+C stops it.",
            flush=True,
        )
        demo.block_thread()
    finally:
        store.close()


def _shown_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def add_serve_command(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="The ranking app for labelers and admins (prints its URL).")
    add_common_arguments(parser)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Default: configs/labeling.yaml.")
    parser.add_argument("--host", default=None, help="Address to listen on (default: the config's, 127.0.0.1).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: the config's).")
    parser.set_defaults(func=serve)
