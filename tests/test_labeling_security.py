"""The labeling app's defences: login throttling and password checks that do not slow the labelers, sessions that
survive a restart, no uploads, the security headers (and the page working under its CSP in Chromium), private
database files, bidirectional controls shown by name, and a bounded time spent.

The app runs as a subprocess (``tests/labeling_server.py``). Flooding clients connect from loopback addresses of
their own (127.0.0.2, ...), so the throttle on 127.0.0.1 that the other tests meet is theirs alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import statistics
import sys
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest

from labeling_ui import users
from labeling_ui.config import LabelingConfig
from labeling_ui.rules import MAX_SECONDS, RankingError, check_seconds, show_bidi_controls
from labeling_ui.server import LOGIN_NICE, LOGIN_SLOTS, LoginGate
from labeling_ui.storage import LabelStore
from labeling_ui.users import LoginThrottle, load_secret, session_token, session_user
from tests.labeling_server import REPO, ApiClient, LabelingServer, chromium, needs_chromium, question_rows

ALICE = ("alice", "alice-password")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    url = f"sqlite:///{tmp / 'labels.db'}"
    store = LabelStore(url)
    store.import_candidates(question_rows(400))  # enough for the flood test's labeler to rank for 16 s
    for name in ("alice", "bob", "carol", "dave"):
        store.add_user(name, f"{name}-password")
    store.close()
    with LabelingServer(url, tmp / "runs") as server:
        yield server, url


def http(url: str, address: str | None = None) -> httpx.Client:
    """A client of the app; ``address``: the loopback address it connects from (default 127.0.0.1)."""
    transport = httpx.HTTPTransport(local_address=address) if address else None
    return httpx.Client(base_url=url, timeout=60, transport=transport)


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/login", data={"username": username, "password": password})


def fail_until(client: httpx.Client, username: str, failures: int) -> None:
    """Send wrong passwords for ``username``, each once the throttle lets it, until ``failures`` were checked."""
    checked = 0
    while checked < failures:
        answer = login(client, username, "wrong-password")
        if answer.status_code == 429:
            time.sleep(float(answer.headers["retry-after"]))
        else:
            assert answer.status_code == 400
            checked += 1


# --- S1: login throttling -----------------------------------------------------------------------------------------


def test_the_throttle_backs_off_exponentially_and_a_success_clears_the_name():
    throttle = LoginThrottle()
    for t in range(5):  # five free failures at t = 0..4 s
        assert throttle.retry_after("bob", "10.0.0.1", now=t) == (0.0, "")
        throttle.failed("bob", "10.0.0.1", now=t)
    # after the 5th failure (t = 4): wait 1 s, so at t = 4.25 there is 0.75 s left, at t = 5 none
    assert throttle.retry_after("bob", "10.0.0.1", now=4.25) == (0.75, "user name")
    assert throttle.retry_after("bob", "10.0.0.1", now=5.0) == (0.0, "")
    assert throttle.retry_after("eve", "10.0.0.1", now=4.25) == (0.0, "")  # another name, same address: free
    throttle.failed("bob", "10.0.0.1", now=5.0)  # 6th: wait 2 s
    assert throttle.retry_after("bob", "10.0.0.9", now=6.0) == (1.0, "user name")  # from any address
    throttle.failed("bob", "10.0.0.1", now=7.0)  # 7th: wait 4 s
    assert throttle.retry_after("bob", "10.0.0.1", now=7.0) == (4.0, "user name")
    for t in range(8, 40):  # 32 failures more at one name: the wait stops growing at 15 minutes
        throttle.failed("bob", "10.0.0.1", now=t)
    assert throttle.retry_after("bob", "10.0.0.1", now=39.0) == (users.MAX_WAIT, "user name")
    # The address had 39 failures: 20 free, then 2**19 s capped at 900 s, the same as the name's.
    throttle.succeeded("bob")
    assert throttle.retry_after("bob", "10.0.0.2", now=39.0) == (0.0, "")  # the name is cleared ...
    assert throttle.retry_after("bob", "10.0.0.1", now=39.0) == (900.0, "address")  # ... its address is not
    assert throttle.retry_after("bob", "10.0.0.1", now=39.0 + 900) == (0.0, "")
    # An hour without a failure and the count starts again: one more failure is a free one.
    later = LoginThrottle()
    for t in range(5):
        later.failed("zoe", "10.0.0.4", now=t)
    later.failed("zoe", "10.0.0.4", now=4 + users.FORGET + 1)
    assert later.retry_after("zoe", "10.0.0.4", now=4 + users.FORGET + 1) == (0.0, "")
    assert users.throttle_message(3.6, "user name") == "Too many failed logins for this user name. Try again in 4 s."
    assert users.throttle_message(0.2, "address") == "Too many failed logins from this address. Try again in 1 s."


def test_a_burst_of_bad_logins_is_refused_with_when_to_try_again(app):
    server, _ = app
    client = http(server.url)
    answers = [login(client, "bob", "wrong-password") for _ in range(6)]
    assert [a.status_code for a in answers] == [400] * 5 + [429]  # the 6th came within the second after the 5th
    assert answers[0].json() == {"detail": "Incorrect credentials."}
    assert answers[-1].json() == {"detail": "Too many failed logins for this user name. Try again in 1 s."}
    assert answers[-1].headers["retry-after"] == "1"
    fail_until(client, "bob", 2)  # the 6th and 7th failures, each after its wait: now 4 s to wait
    for password in ("wrong-password", "bob-password"):  # the right password is refused too while it lasts
        refused = login(client, "bob", password)
        assert refused.status_code == 429 and refused.headers["retry-after"] in ("3", "4")
        assert re.fullmatch(
            r"Too many failed logins for this user name\. Try again in [34] s\.", refused.json()["detail"]
        )
    time.sleep(float(refused.headers["retry-after"]) + 0.5)
    good = login(client, "bob", "bob-password")
    assert good.status_code == 200 and any(name.startswith("access-token") for name in good.cookies)
    # The success cleared the name's failures: the next wrong password is a plain 400, the one after it too.
    assert [login(client, "bob", "wrong-password").status_code for _ in range(2)] == [400, 400]
    client.close()

    # A spray of many names from one address: 20 failures are free, the 21st waits (whatever name it tries).
    sprayer = http(server.url, address="127.0.0.50")
    spray = [login(sprayer, f"nobody-{i}", "guess").status_code for i in range(21)]
    assert spray == [400] * 20 + [429]
    refused = login(sprayer, "carol", "carol-password")
    assert refused.status_code == 429 and "from this address" in refused.json()["detail"]
    sprayer.close()
    with http(server.url) as other:  # other addresses are not affected
        assert login(other, "carol", "carol-password").status_code == 200


def spray(client: httpx.Client, failures: int, forwarded_for: str | None = None) -> list[int]:
    """``failures`` wrong passwords for new names, each naming ``forwarded_for`` (or another address each time) as
    the client in X-Forwarded-For: the statuses."""
    statuses = []
    for i in range(failures):
        headers = {"X-Forwarded-For": forwarded_for or f"198.51.100.{i + 1}"}
        form = {"username": f"sprayed-{uuid.uuid4().hex[:8]}", "password": "guess"}
        statuses.append(client.post("/login", data=form, headers=headers).status_code)
    return statuses


def test_only_a_configured_proxy_may_name_the_client_the_throttle_counts(app, tmp_path):
    _, url = app
    config = tmp_path / "labeling.yaml"
    yaml_text = (REPO / "configs" / "labeling.yaml").read_text()
    config.write_text(yaml_text.replace("trusted_proxies: []", "trusted_proxies: [127.0.0.70]", 1))
    # Its own app: the spray from 127.0.0.1 below must not throttle the address the other tests log in from.
    with LabelingServer(url, tmp_path / "runs", config=config) as server:
        # A client that is not the proxy (here on loopback, which uvicorn trusts by default) names someone else in
        # X-Forwarded-For: it is counted as itself, so the other address is not put over the limit.
        with http(server.url) as liar:
            assert spray(liar, 21, forwarded_for="127.0.0.62") == [400] * 20 + [429]
        with http(server.url, address="127.0.0.62") as framed:
            assert login(framed, "carol", "carol-password").status_code == 200
        # Behind the proxy, the address it forwards is the one counted: one client over the limit, not the others.
        with http(server.url, address="127.0.0.70") as proxy:
            assert spray(proxy, 21, forwarded_for="203.0.113.5") == [400] * 20 + [429]
            dave = {"username": "dave", "password": "dave-password"}
            refused = proxy.post("/login", data=dave, headers={"X-Forwarded-For": "203.0.113.5"})
            assert refused.status_code == 429 and "from this address" in refused.json()["detail"]
            assert proxy.post("/login", data=dave, headers={"X-Forwarded-For": "203.0.113.6"}).status_code == 200


def test_a_trusted_proxy_that_is_not_an_address_is_refused_with_an_example():
    with pytest.raises(
        ValueError, match=r"trusted_proxies: 'proxy.local' is not an IP address or network; write e\.g\."
    ):
        LabelingConfig(trusted_proxies=["127.0.0.1", "proxy.local"])


def flood_logins(url: str, flooders: int, stop: threading.Event, answers: Counter) -> None:
    """``flooders`` clients, each from its own loopback address, send wrong passwords for new names until ``stop``."""

    async def flooder(index: int) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{index + 2}")
        async with httpx.AsyncClient(base_url=url, timeout=120, transport=transport) as client:
            while not stop.is_set():
                form = {"username": f"guess-{uuid.uuid4().hex[:8]}", "password": "wrong-password"}
                status = (await client.post("/login", data=form)).status_code
                answers[status] += 1
                if status == 429:  # told to wait: a well-behaved flood waits
                    await asyncio.sleep(0.5)

    async def main() -> None:
        await asyncio.gather(*(flooder(i) for i in range(flooders)))

    asyncio.run(main())


def submit_latencies(client: ApiClient, submits: int = 30, seconds: float = 30) -> list[float]:
    """A labeler ranks ``submits`` items back to back (for ``seconds`` at most); the round trip of each /submit."""
    latencies = []
    end = time.perf_counter() + seconds
    while len(latencies) < submits and time.perf_counter() < end:
        item = client.call("next_item")
        ranks = {c["id"]: rank for rank, c in enumerate(item["candidates"], start=1)}
        start = time.perf_counter()
        answer = client.call("submit", uuid.uuid4().hex, item["item_id"], json.dumps(ranks), False, "{}", "", 3.0)
        latencies.append(time.perf_counter() - start)
        assert answer["ok"], answer
        time.sleep(0.05)
    return latencies


def test_password_checks_run_off_the_event_loop_a_few_at_a_time_and_at_low_priority():
    running, seen = [], []
    lock = threading.Lock()

    def authenticate(username: str, password: str) -> bool:  # a slow check, as scrypt is (~50 ms)
        with lock:
            running.append(username)
            seen.append((len(running), threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0)))
        time.sleep(0.05)
        with lock:
            running.remove(username)
        return password == "right"

    async def main() -> tuple[list, float]:
        gate = LoginGate(authenticate)
        gaps, ticking = [], True

        async def ticker() -> None:  # the event loop's responsiveness while the checks run
            last = time.perf_counter()
            while ticking:
                await asyncio.sleep(0.005)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()

        tick = asyncio.create_task(ticker())
        answers = await asyncio.gather(
            *(gate.attempt(f"user-{i}", "right" if i % 2 else "wrong", f"10.0.0.{i}") for i in range(32))
        )
        ticking = False
        await tick
        return answers, statistics.median(gaps)

    answers, typical_gap = asyncio.run(main())
    assert [a.status for a in answers] == [400, 200] * 16
    assert max(n for n, _, _ in seen) == LOGIN_SLOTS  # never more checks at once
    assert all(name.startswith("password-check") for _, name, _ in seen)
    if sys.platform == "linux":  # the nice value is per thread there (os.getpriority(PRIO_PROCESS, 0): this thread)
        assert {nice for _, _, nice in seen} == {os.getpriority(os.PRIO_PROCESS, 0) + LOGIN_NICE}
    # A check run on the loop would hold up every tick for its 50 ms; off the loop, ticks come every ~5 ms.
    assert typical_gap < 0.025


def test_a_login_flood_does_not_slow_down_logged_in_labelers(app):
    server, _ = app
    labeler = ApiClient(server.url, "dave", "dave-password")
    try:
        quiet = submit_latencies(labeler)
        stop, answers = threading.Event(), Counter()
        flood = threading.Thread(target=flood_logins, args=(server.url, 32, stop, answers))
        flood.start()
        try:
            time.sleep(1.0)  # the flood in full swing
            loud = submit_latencies(labeler)
        finally:
            stop.set()
            flood.join(timeout=120)
    finally:
        labeler.close()
    assert len(quiet) == 30 and len(loud) >= 3, (len(quiet), len(loud))
    ratio = statistics.median(loud) / statistics.median(quiet)
    p95 = statistics.quantiles(loud, n=20)[-1] / statistics.quantiles(quiet, n=20)[-1]
    print(f"submit latency p50 x{ratio:.2f}, p95 x{p95:.2f} under 32 parallel bad logins; logins: {dict(answers)}")
    assert answers[400] >= 10  # the flood ran: passwords were checked (~20 a second on an idle 2-core machine)
    # Before the checks moved off the event loop into a few low-priority threads, the median ratio was 24-44; on a
    # busy 2-core machine it is now 0.9-2, about the measurement's own noise, so the bound is loose. The p95 of 30
    # submits is noisier still (0.3-4.3 now, 10-18 before): its bound only catches a long tail coming back.
    assert ratio < 3 and p95 < 8, (ratio, p95, statistics.median(quiet), statistics.median(loud))


@needs_chromium
def test_the_login_page_says_when_to_try_again(app):
    server, _ = app
    with chromium() as browser:
        page = browser.new_page()
        page.goto(server.url)
        page.get_by_label("username").fill("carol")
        page.get_by_label("password").fill("wrong-password")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=30_000)  # Gradio's own message for a 400
        with http(server.url) as client:  # 7 failures in all: the next attempt waits 4 s
            fail_until(client, "carol", 6)
        page.get_by_label("username").fill("carol")  # Gradio's page empties the fields after a 400
        page.get_by_label("password").fill("carol-password")  # the right one: refused all the same
        page.get_by_role("button", name="Login").click()  # within the 4 s
        note = page.get_by_role("alert")
        note.wait_for(timeout=10_000)
        assert re.fullmatch(r"Too many failed logins for this user name\. Try again in [1-4] s\.", note.inner_text())
        assert not page.get_by_text("Incorrect Credentials").is_visible()  # one reason shown, the right one


# --- B3: sessions survive a restart --------------------------------------------------------------------------------


def test_a_session_survives_a_sigkill_restart_and_ends_with_a_password_reset(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    store = LabelStore(url)
    store.import_candidates(question_rows(4))
    store.add_user(*ALICE)
    store.close()
    server = LabelingServer(url, tmp_path / "runs").start()
    try:
        client = ApiClient(server.url, *ALICE)
        assert client.call("next_item")["item_id"]
        secret = tmp_path / "runs" / "test" / "labeling" / "session_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        cookies = dict(client.http.cookies)

        server.kill()  # SIGKILL, then a new process on the same port
        server.start()
        assert dict(client.http.cookies) == cookies  # no new login: the same cookie ...
        assert client.call("next_item")["item_id"]  # ... is still a session
        page = client.http.get("/").text
        assert '"username":"alice"' in page.replace(" ", "") and "auth_required" not in page

        forged = httpx.Client(base_url=server.url, timeout=30)
        for name, value in cookies.items():  # the same cookie with its signature's last character changed
            forged.cookies.set(name, value[:-1] + ("A" if value[-1] != "A" else "B"))
        assert forged.post("/gradio_api/call/next_item", json={"data": []}).status_code == 401
        forged.close()

        server.kill()
        store = LabelStore(url)
        store.reset_password("alice", "a-new-password")
        store.close()
        server.start()
        with pytest.raises(httpx.HTTPStatusError, match="401"):  # the old password's sessions are over
            client.call("next_item")
        client.password = "a-new-password"
        client.login()
        assert client.call("next_item")["item_id"]
        client.close()
    finally:
        server.stop()


def test_session_tokens_are_signed_expire_and_end_with_the_user_key():
    secret, key = bytes(range(32)), "scrypt$...$hash-of-the-password"
    token = session_token(secret, "alice", key, now=1_000_000)
    assert session_user(secret, token, {"alice": key}.get, now=1_000_000 + 3600) == "alice"
    assert session_user(secret, token, {"alice": key}.get, now=1_000_000 + users.SESSION_SECONDS + 1) is None
    assert session_user(secret, token, {"alice": "a new password's hash"}.get, now=1_000_001) is None
    assert session_user(secret, token, {}.get, now=1_000_001) is None  # unknown or disabled: no key
    assert session_user(bytes(32), token, {"alice": key}.get, now=1_000_001) is None  # another run's secret
    name, issued, signature = token.split(".")
    bob = session_token(secret, "bob", key, now=1_000_000).split(".")[0]
    assert session_user(secret, f"{bob}.{issued}.{signature}", {"bob": key}.get, now=1_000_001) is None
    for broken in ("", "x", "a.b.c", "a.b.c.d", f"{name}.{issued}"):
        assert session_user(secret, broken, {"alice": key}.get, now=1_000_001) is None


# --- S2: no uploads -----------------------------------------------------------------------------------------------


def test_uploads_are_refused(app):
    server, _ = app
    client = ApiClient(server.url, "carol", "carol-password")
    try:
        big = b"\0" * (20 * 2**20)  # the 20 MB
        for route in ("/gradio_api/upload", "/gradio_api/upload?upload_id=x"):
            answer = client.http.post(route, files={"files": ("big.bin", big, "application/octet-stream")})
            assert answer.status_code == 403 and "takes no files" in answer.json()["detail"]
        assert client.call("next_item")["item_id"]  # the labeler's session is fine
    finally:
        client.close()


# --- S4-S8: security headers, and the page working under its CSP -------------------------------------------------


def test_pages_and_api_answers_carry_the_security_headers_and_every_script_the_nonce(app):
    server, _ = app
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    client = ApiClient(server.url, *ALICE)
    try:
        nonces = set()
        for answer in (anonymous.get("/"), client.http.get("/")):  # the login page and the app's page
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"
            csp = dict(d.strip().split(" ", 1) for d in answer.headers["content-security-policy"].split(";"))
            assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
            assert csp["default-src"] == "'self'" and "'unsafe-inline'" not in csp["script-src"]
            (nonce,) = re.findall(r"'nonce-([^']+)'", csp["script-src"])
            tags = re.findall(r"<script\b[^>]*>", answer.text)
            assert len(tags) >= 5 and all(f'nonce="{nonce}"' in tag for tag in tags), tags
            nonces.add(nonce)
        assert len(nonces) == 2  # a fresh nonce for every page
        api = client.http.post("/gradio_api/call/next_item", json={"data": []})
        assert api.status_code == 200 and api.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in api.headers["content-security-policy"]
    finally:
        anonymous.close()
        client.close()


@needs_chromium
def test_the_page_works_in_chromium_under_its_content_security_policy(app):
    server, url = app
    before = count_rankings(url, "alice")
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        # Run by the browser before any of the page's scripts, and not subject to its policy.
        context.add_init_script(
            "window.__blocked = []; document.addEventListener('securitypolicyviolation', "
            "(e) => window.__blocked.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page = context.new_page()
        console = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(server.url)
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("alice-password")
        page.get_by_role("button", name="Login").click()
        page.wait_for_function("document.querySelector('#prompt textarea')?.value.length > 0", timeout=30_000)
        page.keyboard.type("1234")  # the keyboard shortcuts: the page's js_on_load ran
        page.keyboard.press("Control+Enter")
        deadline = time.monotonic() + 30
        while count_rankings(url, "alice") == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert count_rankings(url, "alice") == before + 1  # ranked and submitted in the browser
        assert page.evaluate("window.__blocked") == []
        assert not [text for text in console if "Content Security Policy" in text], console


def count_rankings(url: str, username: str) -> int:
    store = LabelStore(url)
    try:
        return next(u["n_rankings"] for u in store.list_users() if u["username"] == username)
    finally:
        store.close()


# --- S3 (part), S5: private files, bidi controls, time spent --------------------------------------------------------


def test_the_database_its_wal_and_shm_and_the_session_secret_are_created_0600(tmp_path):
    old = os.umask(0o022)  # the usual umask: files would be created world-readable (0644)
    try:
        store = LabelStore(f"sqlite:///{tmp_path / 'labeling' / 'labels.db'}")
        store.add_user(*ALICE)  # a write: SQLite now has its -wal and -shm files
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "labeling").iterdir()}
        store.close()
        secret = load_secret(tmp_path / "labeling" / "session_secret")
        assert load_secret(tmp_path / "labeling" / "session_secret") == secret and len(secret) == 32
        files["session_secret"] = stat.S_IMODE((tmp_path / "labeling" / "session_secret").stat().st_mode)
    finally:
        os.umask(old)
    assert files == {"labels.db": 0o600, "labels.db-wal": 0o600, "labels.db-shm": 0o600, "session_secret": 0o600}
    (tmp_path / "bad_secret").write_text("not hex\n")
    with pytest.raises(ValueError, match="delete it and start again"):
        load_secret(tmp_path / "bad_secret")


def test_bidi_controls_are_shown_by_their_code_point():
    # "refund of \u202e05\u202c EUR" displays as "refund of 50 EUR": the override reverses "05".
    assert show_bidi_controls("refund of \u202e05\u202c EUR") == "refund of [U+202E]05[U+202C] EUR"
    every = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    assert show_bidi_controls(every) == "".join(f"[U+{c:04X}]" for c in map(ord, every))
    # Text in a right-to-left script, other invisible characters (zero-width space) and emoji are left alone.
    for text in ("שלום עולם", "مرحبا", "a\u200bb", "ok 👍", ""):
        assert show_bidi_controls(text) == text


def test_time_spent_is_clamped_to_an_hour_and_non_numbers_or_negatives_refused():
    assert MAX_SECONDS == 3600
    assert check_seconds(None) is None
    assert check_seconds(12.5) == 12.5 and check_seconds(0) == 0.0 and check_seconds(3600) == 3600.0
    assert check_seconds(99999) == 3600.0  # the value: stored as an hour
    assert check_seconds(3600.5) == 3600.0
    for bad in (-1, -0.5, float("nan"), float("inf"), "12", True):
        with pytest.raises(RankingError, match="time spent"):
            check_seconds(bad)
