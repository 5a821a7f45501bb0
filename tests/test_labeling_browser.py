"""The ranking app in a real Chromium (Playwright, Debian's /usr/bin/chromium), as a labeler and an admin use it.

Screenshots go to the test's tmp dir and to $LABELING_SCREENSHOTS (default runs/_screenshots/), for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from labeling_ui.storage import LabelStore
from tests.conftest import REPO
from tests.labeling_server import LabelingServer, needs_chromium, question_rows

SCREENSHOTS = Path(os.environ.get("LABELING_SCREENSHOTS", REPO / "runs" / "_screenshots"))
LABELER = ("alice", "alice-password")
# Untrusted model output: shown as text, it must neither run nor format anything.
HOSTILE = (
    "<script>window.__xss = 'script'; alert('script')</script> **bold** <b>x</b> "
    "<img src=x onerror=\"window.__xss = 'img'; alert('img')\">"
)

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'labels.db'}"
    store = LabelStore(url)
    rows = question_rows(4)
    rows[0]["candidates"][0] = HOSTILE  # the first item imported is the first one handed out
    rows[0]["prompt"][0]["content"] = "Which answer is best? <i>not italic</i> __not bold__"
    store.import_candidates(rows)
    store.add_user(*LABELER)
    store.close()
    with LabelingServer(url, tmp / "runs") as running:
        yield running, url


def open_page(browser, url: str, username: str, password: str, dialogs: list):
    page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    page.get_by_label("username").fill(username)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_function("document.querySelector('#prompt textarea')?.value.length > 0", timeout=30_000)
    return page


def shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=tmp_path / name)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / name, SCREENSHOTS / name)


def test_labeler_ranks_with_the_keyboard_and_untrusted_text_stays_text(server, browser, tmp_path):
    running, url = server
    dialogs: list[str] = []
    page = open_page(browser, running.url, *LABELER, dialogs)

    assert page.get_by_role("tab").all_inner_texts() == ["Rank", "My rankings"]  # no Admin tab for a labeler
    texts = [page.locator(f"#text-{i} textarea").input_value() for i in range(4)]
    assert HOSTILE in texts  # verbatim, in the labeler's shuffled order
    assert page.locator("#prompt textarea").input_value().endswith("<i>not italic</i> __not bold__")
    assert page.locator(".candidate b, .candidate img, #prompt i").count() == 0
    assert page.inner_text("#progress") == "0 done of 4"

    hostile = texts.index(HOSTILE)
    page.locator("#comment textarea").fill("one response has markup in it")
    page.locator(f"#flags-{hostile}").get_by_role("checkbox", name="unsafe").check()
    page.locator("body").click(position={"x": 5, "y": 700})  # out of the text fields: keys now rank
    page.keyboard.press("a")  # the flag click selected that response: select A again
    page.keyboard.press("1")  # A gets rank 1, B is selected next ...
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Not saved')")
    assert "Rank every response: 3 of 4 have no rank yet" in page.inner_text("#status")

    for key in "b3c2d4":  # select B, rank 3; C, 2; D, 4
        page.keyboard.press(key)
    assert page.locator("#rank-2 input[value='2']").is_checked()
    shoot(page, tmp_path, "labeling-ranked.png")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelector('#progress').innerText.startsWith('1 done')")
    assert "Saved" in page.inner_text("#status")
    shoot(page, tmp_path, "labeling-next-item.png")
    assert (tmp_path / "labeling-next-item.png").stat().st_size > 10_000

    store = LabelStore(url)
    try:
        (ranking,) = store.all_current_rankings()
    finally:
        store.close()
    by_text = {c["text"]: c["id"] for c in ranking["candidates"]}
    assert ranking["display_order"] == [by_text[t] for t in texts]
    assert [ranking["ranks"][by_text[t]] for t in texts] == [1, 3, 2, 4]
    assert ranking["flags"] == {by_text[HOSTILE]: ["unsafe"]} and ranking["comment"] == "one response has markup in it"
    assert ranking["seconds_spent"] > 0

    page.keyboard.press("Alt+s")  # skipping needs a reason
    page.wait_for_function("document.querySelector('#status').innerText.includes('Not skipped')")
    page.locator("#skip-reason textarea, #skip-reason input").first.fill("I cannot judge this one")
    page.keyboard.press("Alt+s")
    page.wait_for_function("document.querySelector('#progress').innerText === '1 done of 3'")

    assert dialogs == [] and page.evaluate("window.__xss") is None
    assert page.get_by_role("tab").all_inner_texts() == ["Rank", "My rankings"]
    assert page.get_by_text("Export preferences").count() == 0


def test_admin_sees_the_admin_tab_and_the_flagged_text_literally(server, browser, tmp_path):
    running, _ = server
    assert running.admin_password, running.output()
    dialogs: list[str] = []
    page = open_page(browser, running.url, "admin", running.admin_password, dialogs)
    page.get_by_role("tab", name="Admin").wait_for()
    assert page.get_by_role("tab").all_inner_texts() == ["Rank", "My rankings", "Admin"]
    page.get_by_role("tab", name="Admin").click()
    page.get_by_text("median s/item").wait_for()
    page.get_by_role("button", name="Refresh").click()
    page.get_by_text(HOSTILE, exact=True).last.wait_for()  # the flagged response, verbatim
    labelers = page.locator("#labelers").inner_text()
    assert "alice" in labelers and "median s/item" in labelers
    shoot(page, tmp_path, "labeling-admin.png")
    page.get_by_role("button", name="Export preferences").click()
    page.wait_for_function("[...document.querySelectorAll('textarea')].some(t => t.value.includes('pairs from'))")
    assert dialogs == [] and page.evaluate("window.__xss") is None
    assert page.locator("img[src='x'], table b").count() == 0


def test_labeler_edits_a_ranking_from_my_rankings_and_it_is_a_new_version(server, browser, tmp_path):
    running, url = server
    dialogs: list[str] = []
    page = open_page(browser, running.url, *LABELER, dialogs)
    page.get_by_role("tab", name="My rankings").click()
    page.locator("#recent input").click()
    page.get_by_role("option").first.click()  # her one ranking (the other item she skipped)
    page.locator("#edit-btn").click()
    page.get_by_text("Prompt (editing your ranking, version 1)").wait_for()
    assert "Editing your ranking (version 1)" in page.inner_text("#status")

    # The form shows the stored ranking in her display order: ranks 1, 3, 2, 4 from the first test, flag and comment.
    texts = [page.locator(f"#text-{i} textarea").input_value() for i in range(4)]
    assert HOSTILE in texts
    assert [page.locator(f"#rank-{i} input[value='{r}']").is_checked() for i, r in enumerate([1, 3, 2, 4])] == [
        True
    ] * 4
    assert page.locator("#comment textarea").input_value() == "one response has markup in it"
    page.locator("body").click(position={"x": 5, "y": 700})
    for key in "a4b1c3d2":
        page.keyboard.press(key)
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Saved your edit (version 2)')")
    assert page.inner_text("#progress") == "1 done of 3"  # an edit is not a new item done

    store = LabelStore(url)
    try:
        (ranking,) = [r for r in store.all_current_rankings() if r["username"] == LABELER[0]]
        assert store.count_rankings() == 2  # version 1 stays; version 2 is current
    finally:
        store.close()
    by_text = {c["text"]: c["id"] for c in ranking["candidates"]}
    assert ranking["version"] == 2 and [ranking["ranks"][by_text[t]] for t in texts] == [4, 1, 3, 2]
    assert ranking["flags"] == {by_text[HOSTILE]: ["unsafe"]} and ranking["comment"] == "one response has markup in it"
    assert dialogs == [] and page.evaluate("window.__xss") is None
