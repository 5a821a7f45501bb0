"""The page for hours of work, in a real Chromium (Playwright, Debian's /usr/bin/chromium): Submit and Skip always in
view and nothing moving, the keys (and the "?" list of them) matching the item, the clock, undo, long replies,
drafts that survive a SIGKILL of the server, a stale second tab refused, leases that follow the screen, and the
admin's download, review actions, progress and user management.

One server for the module (overlap 1, 10 s leases, so "others hold the last item" resolves within a test). Each test
starts from a clean slate: a sweeper ranks every open item first, then the test imports its own and uses its own
labeler. Screenshots of the final page go to $LABELING_SCREENSHOTS (default runs/_screenshots/).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from labeling_ui.db import Assignment, Ranking, User
from labeling_ui.rules import Submission
from labeling_ui.server import KEY_SECONDS
from labeling_ui.storage import LabelStore
from tests.conftest import REPO
from tests.labeling_server import ApiClient, LabelingServer, needs_chromium, question_rows, store_config

# The README shows labeling_ui/screenshots/; LABELING_SCREENSHOTS=labeling_ui/screenshots refreshes them.
SCREENSHOTS = Path(os.environ.get("LABELING_SCREENSHOTS", REPO / "runs" / "_screenshots"))
PASSWORD = "page-password"
LEASE_SECONDS = 10
LONG = " ".join(f"Sentence {i} of a long reply, which the labeler must be able to read whole." for i in range(60))

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    config = tmp / "labeling.yaml"
    shipped = (REPO / "configs" / "labeling.yaml").read_text()
    config.write_text(
        re.sub(
            r"(?m)^overlap: \d+",
            "overlap: 1",
            re.sub(r"(?m)^lease_seconds: \d+", f"lease_seconds: {LEASE_SECONDS}", shipped),
        )
    )
    url = f"sqlite:///{tmp / 'labels.db'}"
    store = LabelStore(url)
    store.add_user("sweeper", PASSWORD)
    store.close()
    with LabelingServer(url, tmp / "runs", config=config) as running:
        yield running, url


def fresh(url: str, rows: list[dict], store_kwargs: dict | None = None) -> str:
    """Rank every item still open (overlap 1: nobody else gets them; a lease of an earlier test's labeler is taken
    over: to this store every lease has run out), import ``rows``, add a new labeler."""
    store = LabelStore(url, store_config(overlap=1, gold_rate=0.0, lease_seconds=1e-3, **(store_kwargs or {})))
    try:
        while (view := store.next_item("sweeper")) is not None:
            ranks = {cid: r for r, (cid, _) in enumerate(view.candidates, start=1)}
            store.submit_ranking("sweeper", Submission(uuid.uuid4().hex, view.item_id, ranks))
        store.import_candidates(rows)
        name = f"lab-{uuid.uuid4().hex[:6]}"
        store.add_user(name, PASSWORD)
        return name
    finally:
        store.close()


def rows_of(k: int, n: int = 1, prefix: str | None = None) -> list[dict]:
    return question_rows(n, k=k, prefix=prefix or f"t{uuid.uuid4().hex[:6]}-")


@pytest.fixture
def login(browser):
    """``login(url, username[, password, width])``: a logged-in page in a browser context of its own, closed after
    the test (an open page keeps renewing its lease and costs the shared cores)."""
    contexts = []

    def open_page(url: str, username: str, password: str = PASSWORD, width: int = 1366):
        contexts.append(browser.new_context(viewport={"width": width, "height": 768}))
        return log_in(contexts[-1].new_page(), url, username, password)

    yield open_page
    for context in contexts:
        context.close()


def log_in(page, url: str, username: str, password: str):
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: (errors.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    page.get_by_label("username").fill(username)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_function(
        "(document.querySelector('#item-key textarea, #item-key input')?.value ?? 'loading') !== 'loading'",
        timeout=30_000,
    )
    page.errors = errors
    return page


def wait_status(page, text: str, timeout: float = 30_000) -> str:
    page.wait_for_function(f"document.querySelector('#status')?.innerText.includes({text!r})", timeout=timeout)
    return page.inner_text("#status")


def away_from_text_fields(page) -> None:
    page.locator("#hint").click()


def rank_all(page, k: int) -> None:
    away_from_text_fields(page)
    page.keyboard.press("a")
    for r in range(1, k + 1):
        page.keyboard.press(str(r))


def leases(url: str, username: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(Assignment.item_id).join(User, User.id == Assignment.user_id)
            return list(connection.scalars(query.where(User.username == username)))
    finally:
        engine.dispose()


def box(page, selector: str) -> dict:
    return page.locator(selector).bounding_box()


# --- the page for hours of work -----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1366, 1024])
def test_submit_and_skip_stay_in_view_and_nothing_moves(server, login, width):
    running, url = server
    name = fresh(url, rows_of(6, n=2))
    page = login(running.url, name, width=width)
    assert [page.locator(f"#cand-{i}").is_visible() for i in range(8)] == [True] * 6 + [False] * 2
    for selector in ("#submit-btn", "#skip-btn", "#skip-reason"):
        b = box(page, selector)
        assert b["y"] >= 0 and b["y"] + b["height"] <= 768 and b["x"] + b["width"] <= width, (selector, b)
    page.mouse.wheel(0, 2000)  # scrolled to the last response: the bar is still there
    page.wait_for_timeout(300)
    assert box(page, "#submit-btn")["y"] + box(page, "#submit-btn")["height"] <= 768

    page.evaluate("window.scrollTo(0, 0)")
    before = {s: box(page, s) for s in ("#submit-btn", "#skip-btn", "#cand-0", "#cand-5", "#comment")}
    away_from_text_fields(page)
    page.keyboard.press("a")
    page.keyboard.press("w")  # flag A factually wrong
    assert page.locator("#flags-0").get_by_role("checkbox", name="factually wrong").is_checked()
    page.keyboard.press("Control+Enter")  # incomplete: a message in the status line
    wait_status(page, "Rank every response")
    page.keyboard.press("Alt+s")  # no reason: another message
    wait_status(page, "Say in a few words why")
    page.evaluate("window.scrollTo(0, 0)")
    after = {s: box(page, s) for s in before}
    assert after == before  # the flag and two messages moved nothing
    assert page.errors == []


def test_at_1366_by_768_an_item_of_four_shows_its_prompt_replies_and_ranks_on_one_screen(server, login):
    running, url = server
    page = login(running.url, fresh(url, rows_of(4)))
    bar = box(page, "#action-bar")["y"]
    for selector in ("#prompt", *(f"#text-{i}" for i in range(4)), *(f"#rank-{i}" for i in range(4))):
        b = box(page, selector)
        assert b["y"] >= 0 and b["y"] + b["height"] <= bar, (selector, b, bar)  # above the bar, no scrolling


def test_a_rank_can_be_cleared_by_its_key_and_its_button(server, login):
    running, url = server
    name = fresh(url, rows_of(4))
    page = login(running.url, name)
    rank_all(page, 4)
    page.keyboard.press("a")
    page.keyboard.press("0")  # A's rank cleared
    page.locator("#clear-1").click()  # and B's
    page.wait_for_function(
        "!document.querySelector('#rank-0 input:checked') && !document.querySelector('#rank-1 input:checked')"
    )
    assert page.locator("#rank-2 input[value='3']").is_checked()  # the others keep theirs
    page.wait_for_function("document.querySelector('#draft-note').innerText.startsWith('Draft saved')")
    page.reload()  # the draft has them cleared too
    page.wait_for_function("document.querySelector('#item-key textarea, #item-key input')?.value.length > 8")
    assert page.locator("#rank-0 input:checked").count() == 0 and page.locator("#rank-1 input:checked").count() == 0
    assert page.locator("#rank-3 input[value='4']").is_checked()
    page.keyboard.press("Control+Enter")
    wait_status(page, "Rank every response")  # not submittable until they are ranked again


def test_the_next_item_starts_at_the_top_of_the_page(server, login):
    running, url = server
    name = fresh(url, rows_of(4, n=2))
    page = login(running.url, name)
    prompt = page.locator("#prompt textarea").input_value()
    page.mouse.wheel(0, 2000)  # down to the last response, where its rank is
    page.wait_for_function("window.scrollY > 0")
    rank_all(page, 4)
    page.keyboard.press("Control+Enter")
    wait_status(page, "Saved")
    assert page.locator("#prompt textarea").input_value() != prompt
    page.wait_for_function("window.scrollY === 0", timeout=5_000)
    assert box(page, "#prompt")["y"] < 768 / 2


# The clock emptied and set again in one go (page.js sets it every second): the bar's boxes with both.
CLOCK_TICK = """() => {
    const clock = document.querySelector('#clock'), shown = clock.textContent;
    const boxes = () => Object.fromEntries(['#action-bar', '#submit-btn', '#skip-btn', '#skip-reason'].map((s) => {
        const r = document.querySelector(s).getBoundingClientRect();
        return [s, {x: r.x, y: r.y, width: r.width, height: r.height}];
    }));
    clock.textContent = '';
    const empty = boxes();
    clock.textContent = '59:59 on this item';
    const ticked = boxes();
    clock.textContent = shown;
    return [empty, ticked];
}"""
# Every 8 px along the bar, two rows of points, every 20 px of scrolling the page: what is drawn on top there.
OVER_THE_BAR = """() => {
    const bar = document.querySelector('#action-bar'), r = bar.getBoundingClientRect(), over = new Set();
    const end = document.documentElement.scrollHeight - window.innerHeight;
    for (let y = 0; y <= end + 20; y += 20) {
        window.scrollTo(0, y);
        for (let x = 4; x < r.width; x += 8) {
            for (const top of [r.top + 3, r.top + r.height / 2]) {
                const e = document.elementFromPoint(x, top);
                if (!bar.contains(e)) over.add(`${e.tagName}.${e.className} at scroll ${y}`);
            }
        }
    }
    window.scrollTo(0, 0);
    return [...over];
}"""


def test_the_action_bar_keeps_its_height_whatever_it_shows(server, login):
    """At 1024 px, the narrowest width the page is made for: the clock's first tick, a draft note, a long skip reason
    and a status message longer than the bar moved Submit and Skip by 7 px once (the bar grew). The bar has a fixed
    height now; the long message is read whole by pointing at it, and nothing the form scrolls under the bar is drawn
    over it."""
    running, url = server
    # A 6-response item, then one of 9 (more than the page's 8 slots): its status message takes 4 lines at 1024 px.
    name = fresh(url, rows_of(6) + rows_of(9), store_kwargs={"max_candidates": 9})
    page = login(running.url, name, width=1024)
    parts = ("#action-bar", "#submit-btn", "#skip-btn", "#skip-reason")
    empty, ticked = page.evaluate(CLOCK_TICK)
    assert ticked == empty  # the clock's first tick moved nothing
    before = {s: box(page, s) for s in parts}
    assert before == empty
    assert page.evaluate(OVER_THE_BAR) == []  # the cards and their labels (z-index 40) pass under the bar

    away_from_text_fields(page)
    page.keyboard.press("a")
    page.keyboard.press("1")  # a draft is saved after a pause: its note in the bar
    page.wait_for_function("document.querySelector('#draft-note').innerText.startsWith('Draft saved')")
    page.keyboard.press("Control+Enter")
    wait_status(page, "Rank every response")
    assert {s: box(page, s) for s in parts} == before
    reason = page.locator("#skip-reason textarea, #skip-reason input").first
    reason.fill("The question is ambiguous, " * 12)  # one line: it scrolls sideways
    assert {s: box(page, s) for s in parts} == before
    page.keyboard.press("Alt+s")
    text = wait_status(page, "this page shows at most 8")
    assert "tell an admin" in text
    assert {s: box(page, s) for s in parts} == before

    message = "#status [data-testid=markdown-wrapper]"
    lines = page.locator(message).evaluate("(e) => [e.scrollHeight, e.clientHeight]")
    assert lines[0] > lines[1] + 10, lines  # longer than the three lines the bar shows: it scrolls ...
    page.hover("#status")  # ... and pointing at it shows it whole, above the bar
    page.wait_for_function(f"(e => e.clientHeight >= e.scrollHeight)(document.querySelector('{message}'))")
    shown = box(page, message)
    assert shown["y"] >= 0 and shown["height"] >= lines[0], shown
    assert {s: box(page, s) for s in parts} == before
    assert page.errors == []


def test_the_keys_match_the_item_and_the_help_lists_them_all(server, login, tmp_path):
    running, url = server
    name = fresh(url, rows_of(3) + rows_of(5))
    page = login(running.url, name)
    hint = page.inner_text("#hint")
    assert "A-C select" in hint and "1-3 rank" in hint
    assert page.locator("#rank-0 input[type=radio]").count() == 3

    assert not page.locator("#help").is_visible()
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()  # shown over the page, not only in the DOM
    help_text = page.inner_text("#help")
    for words in ("unsafe", "private data", "factually wrong", "off-topic", "none is acceptable", "write a comment"):
        assert words in help_text
    keys = [" ".join(k.split()) for k in page.locator("#help td:first-child").all_inner_texts()]
    expected = ["A-H", "1-8", "0", "U", "P", "W", "O", "X", "N", "M", "Esc", "Ctrl+Enter", "Alt+S", "Alt+Z", "?"]
    assert keys == expected
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()
    page.click("#help-btn")  # the ? button opens it too, and a click elsewhere closes it
    assert page.locator("#help").is_visible()
    page.mouse.click(5, 300)
    assert not page.locator("#help").is_visible()

    away_from_text_fields(page)
    page.keyboard.press("b")
    page.keyboard.press("u")  # flag B unsafe
    page.keyboard.press("o")  # and off-topic
    page.keyboard.press("n")  # none acceptable
    assert page.locator("#flags-1").get_by_role("checkbox", name="unsafe").is_checked()
    assert page.locator("#flags-1").get_by_role("checkbox", name="off-topic").is_checked()
    assert page.locator("#none-ok input").is_checked()
    page.keyboard.press("m")  # into the comment
    page.keyboard.type("b strays 1")  # typed as text: no key acts while in a text box
    page.keyboard.press("Escape")  # out of it: keys act again
    assert page.evaluate("document.activeElement.tagName") != "TEXTAREA"
    page.keyboard.press("a")
    for r in "132":
        page.keyboard.press(r)
    assert page.locator("#comment textarea").input_value() == "b strays 1"
    page.keyboard.press("Control+Enter")
    wait_status(page, "Saved.")
    page.wait_for_function("document.querySelector('#hint').innerText.includes('A-E select')")
    assert "1-5 rank" in page.inner_text("#hint") and page.locator("#rank-0 input[type=radio]").count() == 5

    store = LabelStore(url)
    try:
        (ranking,) = [r for r in store.all_current_rankings() if r["username"] == name]
    finally:
        store.close()
    b = ranking["display_order"][1]
    assert ranking["flags"] == {b: ["off_topic", "unsafe"]} and ranking["none_acceptable"]
    assert ranking["comment"] == "b strays 1" and ranking["ranks"][b] == 3
    assert page.errors == []


def test_the_clock_counts_and_undo_reopens_the_last_submit_as_an_edit(server, login):
    running, url = server
    name = fresh(url, rows_of(4, n=2))
    page = login(running.url, name)
    page.wait_for_function("/^0:0[1-9] on this item$/.test(document.querySelector('#clock').innerText)")
    first_prompt = page.locator("#prompt textarea").input_value()
    rank_all(page, 4)
    page.keyboard.press("Control+Enter")
    wait_status(page, "Undo (Alt+Z)")
    assert page.locator("#undo-btn").is_enabled()
    page.keyboard.press("Alt+z")
    wait_status(page, "Undone")
    assert page.locator("#prompt textarea").input_value() == first_prompt
    assert page.get_by_text("Prompt (editing your ranking, version 1)").is_visible()
    away_from_text_fields(page)
    page.keyboard.press("a")
    page.keyboard.press("4")  # A was rank 1: now 4 ...
    page.keyboard.press("d")
    page.keyboard.press("1")  # ... and D 1
    page.keyboard.press("Control+Enter")
    wait_status(page, "Saved your edit (version 2)")
    assert page.locator("#prompt textarea").input_value() != first_prompt  # back to the next item
    assert page.inner_text("#progress") == "1 done of 2"
    rank_all(page, 4)
    page.keyboard.press("Control+Enter")
    wait_status(page, "Undo (Alt+Z)")
    page.wait_for_function("document.querySelector('#undo-btn').disabled", timeout=20_000)  # gone after 10 s
    page.wait_for_function("!document.querySelector('#status').innerText.includes('Undo')")  # and so is its hint
    assert "Saved" in page.inner_text("#status")

    store = LabelStore(url)
    try:
        mine = [r for r in store.all_current_rankings() if r["username"] == name]
    finally:
        store.close()
    ranks = sorted((r["version"], [r["ranks"][c] for c in r["display_order"]]) for r in mine)
    assert ranks == [(1, [1, 2, 3, 4]), (2, [4, 2, 3, 1])]


def test_a_long_reply_expands_to_be_read_whole(server, login):
    running, url = server
    rows = rows_of(4)
    rows[0]["candidates"][2] = LONG
    # A right-to-left override would show "refund of 05" as "refund of 50": the page shows the control instead.
    rows[0]["candidates"][1] = "Your refund of \u202e05\u202c dollars is on its way."
    rows[0]["prompt"][0]["content"] += " \u2067hidden\u2069"
    name = fresh(url, rows)
    page = login(running.url, name)
    texts = [page.locator(f"#text-{i} textarea").input_value() for i in range(4)]
    assert "Your refund of [U+202E]05[U+202C] dollars is on its way." in texts
    assert page.locator("#prompt textarea").input_value().endswith(" [U+2067]hidden[U+2069]")
    slot = texts.index(LONG)
    area = f"#text-{slot} textarea"
    overflow = "(a) => a.scrollHeight - a.clientHeight"
    assert page.locator(area).evaluate(overflow) > 100  # 7 lines shown, the rest scrolls
    page.locator(f"#expand-{slot}").click()
    page.wait_for_function(
        f"document.querySelector('{area}').scrollHeight <= document.querySelector('{area}').clientHeight + 2"
    )
    assert box(page, f"#cand-{slot}")["width"] > 1200  # the whole row
    away_from_text_fields(page)
    page.keyboard.press("abcd"[slot])
    page.keyboard.press("x")  # the key does the same: collapsed again
    assert page.locator(area).evaluate(overflow) > 100


def test_an_item_the_page_cannot_show_can_still_be_skipped(server, login):
    running, url = server
    # Imported before the limit (or with a larger max_candidates): 9 replies, the page has 8 slots.
    name = fresh(url, rows_of(9) + rows_of(4), store_kwargs={"max_candidates": 9})
    page = login(running.url, name)
    status = page.inner_text("#status")
    assert "This item has 9 responses; this page shows at most 8" in status
    assert not page.locator("#submit-btn").is_enabled()
    assert page.locator("#skip-reason textarea, #skip-reason input").first.input_value().startswith("The page cannot")
    page.keyboard.press("Alt+s")
    wait_status(page, "Skipped")
    assert page.locator("#submit-btn").is_enabled() and page.locator("#cand-3").is_visible()


# --- one truth per item, leases, drafts ---------------------------------------------------------------------------


def test_a_stale_second_tab_is_refused_and_shows_the_current_item(server, login):
    running, url = server
    name = fresh(url, rows_of(4, n=3))
    first = login(running.url, name)
    second = first.context.new_page()  # the same login, another tab: the same item in hand
    second.goto(running.url)
    second.wait_for_function("document.querySelector('#item-key textarea, #item-key input')?.value.length > 8")
    assert second.locator("#prompt textarea").input_value() == first.locator("#prompt textarea").input_value()
    rank_all(first, 4)
    first.keyboard.press("Control+Enter")
    wait_status(first, "Saved")
    away_from_text_fields(second)
    second.keyboard.press("a")
    for r in "4321":  # another ranking of the same item
        second.keyboard.press(r)
    second.keyboard.press("Control+Enter")
    text = wait_status(second, "Not saved")
    assert "already ranked this item" in text and "My rankings" in text
    assert second.locator("#prompt textarea").input_value() == first.locator("#prompt textarea").input_value()

    store = LabelStore(url)
    try:
        mine = [r for r in store.all_current_rankings() if r["username"] == name]
    finally:
        store.close()
    assert [(r["version"], [r["ranks"][c] for c in r["display_order"]]) for r in mine] == [(1, [1, 2, 3, 4])]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.scalar(
                sa.select(sa.func.count()).select_from(Ranking).join(User).where(User.username == name)
            )
    finally:
        engine.dispose()
    assert rows == 1  # no second version: the stale tab made no edit


def test_an_admin_on_the_admin_tab_holds_nothing_and_the_last_item_comes_back(server, login):
    running, url = server
    name = fresh(url, rows_of(4))
    admin = login(running.url, "admin", running.admin_password)
    admin.get_by_text("median s/item").wait_for()  # the Admin tab is shown first
    admin.wait_for_timeout(1500)
    assert leases(url, "admin") == []
    ben = ApiClient(running.url, name, PASSWORD)  # a labeler takes the last item through the API
    try:
        taken = ben.call("next_item")
    finally:
        ben.close()
    admin.get_by_role("tab", name="Rank", exact=True).click()
    admin.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('Others are working')")
    assert "the last 1 item" in admin.locator("#prompt textarea").input_value()
    assert leases(url, "admin") == []
    # Nobody renews ben's lease: after 10 s the page, checking again every 2.5 s, is handed the item.
    admin.wait_for_function(
        "document.querySelector('#prompt textarea').value.startsWith('Question')", timeout=LEASE_SECONDS * 3000
    )
    assert leases(url, "admin") == [taken["item_id"]]
    admin.get_by_role("tab", name="Admin").click()  # off screen: the page releases the item at once
    released = time.monotonic()
    ben = ApiClient(running.url, name, PASSWORD)
    try:
        while (again := ben.call("next_item")) is None:
            # The page renewed its lease at most 2.5 s before the switch: handed on before 10 s, it was released.
            assert time.monotonic() - released < LEASE_SECONDS - 3, "the page did not release the item"
            time.sleep(0.5)
        assert again["item_id"] == taken["item_id"]
    finally:
        ben.close()
    assert admin.errors == []


def test_a_draft_survives_a_sigkill_of_the_server(server, login):
    running, url = server
    name = fresh(url, rows_of(4, n=2))
    page = login(running.url, name)
    prompt = page.locator("#prompt textarea").input_value()
    away_from_text_fields(page)
    page.keyboard.press("a")
    page.keyboard.press("2")  # A: 2, B selected
    page.keyboard.press("w")  # B: factually wrong
    page.locator("#comment textarea").fill("half done")
    page.wait_for_function("document.querySelector('#draft-note').innerText.startsWith('Draft saved')")

    running.kill()  # SIGKILL: nothing is flushed
    running.start()
    page.goto(running.url)  # the session may be gone with the process: log in again if asked
    if page.get_by_label("username").count():
        page.get_by_label("username").fill(name)
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
    page.wait_for_function("document.querySelector('#item-key textarea, #item-key input')?.value.length > 8")
    assert page.locator("#prompt textarea").input_value() == prompt
    assert page.locator("#rank-0 input[value='2']").is_checked()
    assert page.locator("#flags-1").get_by_role("checkbox", name="factually wrong").is_checked()
    assert page.locator("#comment textarea").input_value() == "half done"
    assert page.locator("#rank-1 input:checked").count() == 0
    assert page.inner_text("#draft-note") == "Your unsaved ranks of this item are back (a draft)."

    rank_all(page, 4)
    page.keyboard.press("Control+Enter")
    wait_status(page, "Undo (Alt+Z)")
    assert page.locator("#prompt textarea").input_value() != prompt
    assert page.inner_text("#draft-note").strip() == ""  # the last item's note does not follow to the next


# --- the admin tab ------------------------------------------------------------------------------------------------


def test_a_page_left_open_across_a_restart_of_the_server_still_submits(server, login):
    running, url = server
    name = fresh(url, rows_of(4, n=2))
    page = login(running.url, name)
    prompt = page.locator("#prompt textarea").input_value()

    running.kill()  # the server forgets the page's session state (its item, the ranks each radio offers)
    running.start()
    away_from_text_fields(page)
    for key in "a4b3c2d1":  # A: 4, B: 3, C: 2, D: 1, typed after the restart, with no reload
        page.keyboard.press(key)
    page.keyboard.press("Control+Enter")
    wait_status(page, "Saved")
    assert page.locator("#prompt textarea").input_value() != prompt  # on to the next item
    assert page.locator("text=Error").count() == 0

    store = LabelStore(url)
    try:
        (ranking,) = [r for r in store.all_current_rankings() if r["username"] == name]
    finally:
        store.close()
    assert ranking["prompt"] == prompt
    assert [ranking["ranks"][c] for c in ranking["display_order"]] == [4, 3, 2, 1]


def test_what_was_typed_just_before_a_reload_or_log_out_comes_back(server, login):
    running, url = server
    name = fresh(url, rows_of(4))
    page = login(running.url, name)
    prompt = page.locator("#prompt textarea").input_value()
    away_from_text_fields(page)
    page.keyboard.press("a")
    page.keyboard.press("2")  # A: 2, then a reload before the pause that saves a draft
    page.keyboard.press("w")  # B: factually wrong
    page.reload()
    page.wait_for_function("document.querySelector('#item-key textarea, #item-key input')?.value.length > 8")
    assert page.locator("#prompt textarea").input_value() == prompt
    assert page.locator("#rank-0 input[value='2']").is_checked()
    assert page.locator("#flags-1").get_by_role("checkbox", name="factually wrong").is_checked()
    assert page.inner_text("#draft-note") == "Your unsaved ranks of this item are back (a draft)."

    page.locator("#comment textarea").fill("typed just before logging out")
    page.locator("#logout-btn").click()
    page.get_by_label("username").wait_for(timeout=30_000)
    page = log_in(page, running.url, name, PASSWORD)
    assert page.locator("#prompt textarea").input_value() == prompt
    assert page.locator("#comment textarea").input_value() == "typed just before logging out"
    assert page.locator("#rank-0 input[value='2']").is_checked()


def test_a_labeler_whose_session_ended_is_told_to_log_in_again_and_keeps_the_page(server, login):
    running, url = server
    name = fresh(url, rows_of(4))
    page = login(running.url, name)
    prompt = page.locator("#prompt textarea").input_value()
    store = LabelStore(url)
    try:
        store.reset_password(name, "a-new-password")  # by an admin: the labeler's sessions end
    finally:
        store.close()
    time.sleep(KEY_SECONDS + 1)
    rank_all(page, 4)
    page.keyboard.press("Control+Enter")
    banner = page.locator("#session-banner")
    banner.wait_for(timeout=30_000)
    assert banner.inner_text().startswith("Your session has ended")
    assert banner.get_by_role("link", name="Log in again").is_visible()
    assert page.locator("#prompt textarea").input_value() == prompt  # what the labeler sees stays
    assert page.locator("#rank-3 input[value='4']").is_checked()


def test_the_admin_downloads_the_export_reviews_flags_and_manages_users(server, login, tmp_path):
    running, url = server
    rows = rows_of(4, n=2)
    name = fresh(url, rows)
    labeler = login(running.url, name)
    for flag in (True, False):
        if flag:
            labeler.locator("#flags-0").get_by_role("checkbox", name="unsafe").check()
        rank_all(labeler, 4)
        labeler.keyboard.press("Control+Enter")
        wait_status(labeler, "Saved")

    admin = login(running.url, "admin", running.admin_password, width=1024)
    admin.get_by_text("median s/item").wait_for()
    assert "items complete" in admin.inner_text("#overview")
    for table in ("#per-item", "#batches", "#labelers", "#agreement", "#flagged"):  # whole at 1024 px: nothing cut off
        cut = admin.evaluate(
            f"() => {{ const t = document.querySelector('{table} table'); const c = document.querySelector('{table}');"
            "return t.getBoundingClientRect().right - c.getBoundingClientRect().right; }"
        )
        assert cut <= 1, (table, cut)
    assert "rankings" in admin.inner_text("#per-item")
    admin.get_by_text("overlap is 1", exact=False).wait_for()  # why the agreement table is empty

    admin.locator("#flagged-pick input").click()
    admin.get_by_role("option", name=re.compile(re.escape(rows[0]["prompt_id"]))).click()
    admin.locator("#exclude-btn").click()
    admin.wait_for_function("document.querySelector('#review-out').innerText.includes('excluded from the export')")
    assert "excluded" in admin.inner_text("#flagged")

    admin.locator("#export-btn").click()
    admin.locator("#download a").first.wait_for()
    with admin.expect_download() as download:
        admin.locator('#download a[download="preferences.jsonl"]').click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines and all(rows[0]["prompt_id"] not in line for line in lines)  # the excluded item is left out
    assert any(rows[1]["prompt_id"] in line for line in lines)

    new = f"new-{uuid.uuid4().hex[:6]}"
    admin.locator("#new-name textarea, #new-name input").first.fill(new)
    admin.locator("#add-user-btn").click()
    admin.wait_for_function("document.querySelector('#user-out textarea').value.includes('Password')")
    password = admin.locator("#user-out textarea").input_value().rsplit(": ", 1)[1]
    store = LabelStore(url)
    try:
        assert store.verify_user(new, password)
    finally:
        store.close()
    admin.locator("#user-pick input").click()
    admin.get_by_role("option", name=new, exact=True).click()
    admin.locator("#disable-btn").click()
    admin.wait_for_function("document.querySelector('#user-out textarea').value.startsWith('Disabled')")
    store = LabelStore(url)
    try:
        assert not store.verify_user(new, password)
    finally:
        store.close()
    assert admin.errors == [] and labeler.errors == []


# --- screenshots of the final page --------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1366, 1024])
def test_screenshots_of_the_page(server, login, width):
    running, url = server
    rows = rows_of(5)
    rows[0]["prompt"][0]["content"] = (
        f"From: Sam Lee\nHi, my mug arrived with a crack in the handle. Can you send a new one? Order #{width}."
    )
    rows[0]["candidates"] = [
        "Hi Sam,\n\nSorry your mug arrived cracked. We will send a replacement today; no need to return the "
        "damaged one.\n\nWarmly,\nThe Juniper & Co. team",
        "Dear customer, we regret to inform you that damage can occur in transit.",
        "Hi Sam,\n\nThanks for your order! Our mugs are made by hand in small batches.\n\nWarmly,\nThe Juniper & "
        "Co. team",
        "Hi Sam, a new mug is on its way (tracking link to follow). Kind regards, Customer Support",
        "Hi Sam,\n\nSo sorry about the crack. A replacement ships today and the tracking link follows by e-mail. "
        + "Please keep the cracked mug for glazing tests, or recycle it. " * 4
        + "\n\nWarmly,\nThe Juniper & Co. team",
    ]
    name = fresh(url, rows)
    page = login(running.url, name, width=width)
    away_from_text_fields(page)
    page.keyboard.press("a")
    page.keyboard.press("1")
    page.keyboard.press("3")
    page.keyboard.press("u")
    page.wait_for_timeout(1500)  # the clock and the draft note
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"labeling-{width}.png"
    page.screenshot(path=path)
    assert path.stat().st_size > 20_000
