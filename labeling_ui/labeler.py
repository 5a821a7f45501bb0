"""The labeler's events on the page: the Rank tab (an item shown, submitted, skipped, undone, kept as a draft) and the
My rankings tab (a ranking reopened to edit). Each handler takes the login from the request and acts through
``LabelingService``; none touches the store.

``submission`` builds a ``Submission`` from what a labeler sent, the page's form or an API client's JSON alike.
"""

import json
import time
import uuid
from typing import Any

import gradio as gr

from labeling_ui.layout import UNDO_SECONDS, Page, shortcuts_html
from labeling_ui.rules import FLAGS, Submission, show_bidi_controls
from labeling_ui.service import LabelingService
from labeling_ui.storage import Assigned, ItemView

UNDO_HINT = " Undo (Alt+Z) reopens it to edit, for a few seconds."
DRAFT_RESTORED = "Your unsaved ranks of this item are back (a draft)."


def logged_in(service: LabelingService, request: gr.Request) -> str:
    """The user name of the request's login, while the account is active."""
    username = getattr(request, "username", None)
    if not username or service.role(username) is None:
        raise gr.Error("You are not logged in, or your account was disabled. Reload the page and log in.")
    return username


def _json_object(text: str | dict, what: str) -> dict:
    """A JSON object: a dict as it is (the page's form), or an API client's JSON text of one."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f'{what} must be a JSON object, e.g. {{"<candidate id>": 1}}: {error}') from error
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object keyed by candidate id.")
    return value


def submission(
    submission_id: str,
    item_id: str,
    ranks: str | dict,
    none_acceptable: bool | None,
    flags: str | dict | None,
    comment: str | None,
    seconds_spent: float | None,
    display_order: list[str] | None = None,
) -> Submission:
    """A ranking as a labeler sent it, on the page or through the API. ``ranks`` ({candidate id: rank}) and ``flags``
    ({candidate id: [flag, ...]}) are dicts, or an API client's JSON text of them (a ValueError says what is wrong)."""
    return Submission(
        submission_id=submission_id,
        item_id=item_id,
        ranks=_json_object(ranks, "ranks"),
        none_acceptable=bool(none_acceptable),
        flags=_json_object(flags or "{}", "flags"),
        comment=comment or "",
        seconds_spent=seconds_spent,
        display_order=display_order,
    )


class LabelerEvents:
    """The labeler's event handlers (an admin's too, on the Rank and My rankings tabs). Each reads the login from
    ``request`` and returns {component: update}; a component left out of the answer keeps what it shows."""

    def __init__(self, service: LabelingService, page: Page):
        self.service, self.page, self.form = service, page, page.form
        self.slots = len(page.form.slots)

    def user(self, request: gr.Request) -> str:
        return logged_in(self.service, request)

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
        shown: dict | None = None,
    ) -> dict:
        """The form showing ``view``, prefilled with ``ranking`` (the version being edited, or the labeler's draft:
        ``restored``), or saying why there is nothing to rank. The draft note is the shown item's own.

        ``shown``: what the page shows now, as far as the event's inputs tell ({component: value}, its state among
        them). What would be set to what it shows already is left out of the answer: the next item of as many
        responses keeps its cards, key hint and rank choices, and the empty cards stay as they are."""
        form, ranking, shown = self.form, ranking or {}, shown or {}
        candidates = view.candidates if view is not None else []
        k = len(candidates)
        too_many = k > self.slots
        before = shown.get(form.state)  # an item on the page: its cards and key hint are as it set them
        cards_before = None if not before else len(before["order"]) if len(before["order"]) <= self.slots else 0
        done, total = progress or self.service.progress(username)
        updates: dict[gr.blocks.Block, Any] = {
            form.status: message,
            form.progress: f"**{done} done** of {total}",
            form.hint: shortcuts_html(0 if too_many else k),  # left out below for as many cards as before
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
                form.prompt: show_bidi_controls(view.prompt),
                form.item_key: f"edit:{view.item_id}" if edits else view.item_id,
            }
            if not before or before.get("edits") != edits:  # the label says which version is being edited
                updates[form.prompt] = gr.Textbox(value=updates[form.prompt], label=label)
            if too_many:
                updates[form.status] = (
                    f"**This item has {k} responses; this page shows at most {self.slots}.** Skip it (the reason "
                    "is filled in), and tell an admin: it should not have been imported."
                )
                updates[form.skip_reason] = f"The page cannot show {k} responses (at most {self.slots})."
        ranks, flags = ranking.get("ranks", {}), ranking.get("flags", {})
        cards = 0 if too_many else k
        same_cards = cards == cards_before
        for i, slot in enumerate(form.slots):
            cid, text = candidates[i] if i < cards else (None, "")
            if not same_cards:
                updates[slot.column] = gr.Column(visible=i < cards)
            rank = ranks.get(cid)
            updates[slot.rank] = rank if same_cards else gr.Radio(choices=list(range(1, cards + 1)), value=rank)
            if i < cards or cards_before is None or i < cards_before:  # an empty card stays empty
                updates[slot.text] = show_bidi_controls(text)
            updates[slot.flags] = flags.get(cid, [])
        # The Submit button is set even so: drawn anew, it lets go of the focus a Submit left on it, which would
        # otherwise hold the page down where the last item was scrolled to (the next item starts at the top).
        if same_cards:
            del updates[form.hint]
        if before and not updates[form.wait_timer].active:  # it stopped when the item before came
            del updates[form.wait_timer]
        return {c: value for c, value in updates.items() if c not in shown or shown[c] != value}

    def show_next(self, username: str, message: str, got: Assigned | None = None, shown: dict | None = None) -> dict:
        """The labeler's item in hand (with its draft), or why there is none; ``got``: handed out already; ``shown``:
        what the page shows now (``render``)."""
        got = got or self.service.assign(username)
        draft = got.draft
        progress = (got.done, got.total)
        restored = bool(draft and (draft["ranks"] or draft["flags"] or draft["comment"] or draft["none_acceptable"]))
        return self.render(
            username,
            got.view,
            message,
            draft,
            held_by_others=got.held_by_others,
            progress=progress,
            restored=restored,
            shown=shown,
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

    def _form_submission(self, values: dict) -> Submission:
        """What the form says about the item in its state."""
        form, state = self.form, values[self.form.state]
        slots = dict(zip(state["order"], form.slots, strict=False))  # the item's K candidates fill the first slots
        return submission(
            submission_id=state["submission_id"],
            item_id=state["item_id"],
            ranks={cid: values[slot.rank] for cid, slot in slots.items()},
            flags={cid: values[slot.flags] for cid, slot in slots.items() if values[slot.flags]},
            none_acceptable=values[form.none_ok],
            comment=values[form.comment],
            seconds_spent=round(time.time() - state["shown_at"], 1),
            display_order=state["order"],
        )

    def on_submit(self, values: dict, request: gr.Request) -> dict:
        username, form = self.user(request), self.form
        state = values[form.state] = self.in_hand(username, values[form.state], values[form.item_key])
        if not state:
            return {**self.show_next(username, "Nothing to submit."), **self.recent_choices(username)}
        edits = state.get("edits")
        result, got = self.service.submit_and_next(username, self._form_submission(values), edits)
        if not result["ok"] and not result["stale"]:  # keep the form (and its submission id): fix and resubmit
            return {form.status: f"**Not saved.** {result['message']}"}
        if not result["ok"]:  # out of date: never turned into an edit; show what the labeler holds now
            current = self.show_next(username, f"**Not saved.** {result['message']}", shown=values)
            return {**current, **self.recent_choices(username)}
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
        return {**self.show_next(username, message, got, shown=values), **self.recent_choices(username), **undo}

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
        shown = {self.form.state: state, self.form.skip_reason: reason}
        return self.show_next(username, prefix + result["message"], shown=shown)

    def on_draft(self, values: dict, request: gr.Request) -> dict:
        """Keep the labeler's unfinished ranks, flags and comment (static/page.js sends them after a pause)."""
        username, form = self.user(request), self.form
        state = values[form.state] = self.in_hand(username, values[form.state], values[form.item_key])
        if not state or state.get("edits"):
            return {form.draft_note: gr.skip()}
        submission = self._form_submission(values)
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
