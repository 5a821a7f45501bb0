"""No acknowledged label is lost or doubled when the app dies: 16 clients submit over HTTP while the server process is
killed with SIGKILL and restarted; on SQLite and on PostgreSQL (a fresh database per test, dropped afterwards).

A client counts a submission as acknowledged only when the app answered ``ok``. A submission without an answer is
retried with the same submission id after the restart, as a browser or gradio_client retry would; it may have been
stored before the crash or not, but never twice.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa

from labeling_ui.config import LabelingConfig
from labeling_ui.db import Ranking, User
from labeling_ui.server import KEY_SECONDS
from labeling_ui.storage import LabelStore
from tests.labeling_server import REPO, ApiClient, LabelingServer, chromium, free_port, needs_chromium, question_rows
from tests.test_labeling_page import log_in, rank_all, wait_status

CLIENTS = 16
ACKS_PER_PHASE = 48  # acknowledged submissions before the kill, and again after the restart


class Labeler(threading.Thread):
    """Ranks items in a loop until told to stop; reconnects (and logs in again) whenever a call fails."""

    def __init__(self, url: str, username: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.username, self.stop = url, username, stop
        self.acknowledged: list[tuple[str, str]] = []  # (submission_id, item_id)
        self.pending: tuple[str, str] | None = None  # sent, not answered yet
        self.errors = 0  # calls that got no answer: the server was down
        self.failure: BaseException | None = None  # anything else ends the thread and fails the test
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            self._work()
        except BaseException as error:
            self.failure = error

    def _work(self) -> None:
        client = ApiClient(self.url, self.username, "password-" + self.username, timeout=20, login=False)
        logged_in = False
        try:
            while not self.stop.is_set():
                try:
                    if not logged_in:
                        client.login()
                        logged_in = True
                    if self.pending is None:
                        item = client.call("next_item")
                        if item is None:
                            return
                        ranks = {c["id"]: rank for rank, c in enumerate(item["candidates"], start=1)}
                        self.pending = (uuid.uuid4().hex, item["item_id"], json.dumps(ranks))
                    result = client.call("submit", *self.pending, False, "{}", "", 1.0)
                    assert result["ok"], result
                    with self.lock:
                        self.acknowledged.append(self.pending[:2])
                    self.pending = None
                except (httpx.HTTPError, PermissionError):  # the server is down, or restarted and lost the session
                    self.errors += 1
                    logged_in = False
                    time.sleep(0.5)
        finally:
            client.close()


def wait_for_acks(labelers: list[Labeler], at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(lab.acknowledged) for lab in labelers) < at_least:
        assert time.monotonic() < deadline, "the clients stopped making progress"
        failures = [lab.failure for lab in labelers if lab.failure is not None]
        assert not failures, f"a client failed: {failures[0]!r}"
        assert any(lab.is_alive() for lab in labelers), "every client stopped"
        time.sleep(0.05)


def test_acknowledged_submissions_survive_sigkill_exactly_once(db_url, tmp_path):
    store = LabelStore(db_url, LabelingConfig(overlap=2, gold_rate=0.0))
    store.import_candidates(question_rows(400))
    users = [f"user{i:02d}" for i in range(CLIENTS)]
    for name in users:
        store.add_user(name, "password-" + name)
    store.close()

    server = LabelingServer(db_url, tmp_path / "runs").start()
    stop = threading.Event()
    labelers = [Labeler(server.url, name, stop) for name in users]
    try:
        for labeler in labelers:
            labeler.start()
        wait_for_acks(labelers, ACKS_PER_PHASE)
        server.kill()  # mid-traffic: some submits are in flight, some committed but not yet answered
        acked_before_kill = sum(len(lab.acknowledged) for lab in labelers)
        server.start()
        wait_for_acks(labelers, acked_before_kill + ACKS_PER_PHASE)
    finally:
        stop.set()
        for labeler in labelers:
            labeler.join(timeout=60)
        server.stop()

    assert all(lab.failure is None for lab in labelers), [lab.failure for lab in labelers]
    assert sum(lab.errors for lab in labelers) > 0, "no client noticed the crash: the kill came too late to test it"
    acknowledged = [(lab.username, sid, item) for lab in labelers for sid, item in lab.acknowledged]
    assert len({sid for _, sid, _ in acknowledged}) == len(acknowledged)

    engine = sa.create_engine(
        sa.make_url(db_url).set(drivername="postgresql+psycopg") if "postgresql" in db_url else db_url
    )
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(Ranking.submission_id, User.username, Ranking.item_id, Ranking.version).join(
                    User, User.id == Ranking.user_id
                )
            ).all()
    finally:
        engine.dispose()
    per_submission = Counter(row.submission_id for row in rows)
    stored = {row.submission_id: (row.username, row.item_id) for row in rows}
    for username, sid, item in acknowledged:
        assert per_submission[sid] == 1, f"acknowledged submission {sid} is stored {per_submission[sid]} times"
        assert stored[sid] == (username, item)
    # Retries after the crash never made a second version: one row per (labeler, item), all version 1.
    assert Counter((row.username, row.item_id) for row in rows).most_common(1)[0][1] == 1
    assert {row.version for row in rows} == {1}
    # Beyond the acknowledged ones, only submissions still unanswered when the clients stopped may be stored.
    assert len(rows) - len(acknowledged) <= CLIENTS


# --- a database that stops answering ------------------------------------------------------------------------------


class Switch:
    """A TCP forwarder to PostgreSQL that can be cut (every connection dropped, new ones refused) and put back: the
    app reaches its database through it, as through a network that fails."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target, self.port, self.open = target, free_port(), []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() blocked in its thread: close() alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: down()
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def test_an_app_whose_database_does_not_answer_says_so_and_will_not_start(tmp_path):
    closed = free_port()
    command = [sys.executable, "-m", "labeling_ui", "serve", "--runs_dir", str(tmp_path), "--port", str(free_port())]
    command += ["--db", f"postgresql://postgres@127.0.0.1:{closed}/labels"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"Cannot reach the labels' database at postgresql://postgres@127.0.0.1:{closed}/labels" in done.stderr
    assert "Start it (or correct --db) and run this again." in done.stderr
    assert "Traceback" not in done.stderr


@needs_chromium
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_submit_while_the_database_is_away_keeps_the_ranks_and_the_next_one_saves(db_url, tmp_path):
    store = LabelStore(db_url)
    store.import_candidates(question_rows(2))
    store.add_user("ana", "ana-password")
    store.close()
    switch = Switch()
    through = db_url.replace("127.0.0.1:5432", f"127.0.0.1:{switch.port}")
    with LabelingServer(through, tmp_path / "runs") as server, chromium() as browser:
        page = log_in(browser.new_page(), server.url, "ana", "ana-password")
        prompt = page.locator("#prompt textarea").input_value()
        rank_all(page, 4)
        time.sleep(KEY_SECONDS + 1)  # the login's key was read before: a database away must not end the session
        switch.down()
        page.keyboard.press("Control+Enter")
        wait_status(page, "The server cannot save right now")
        assert page.locator("#prompt textarea").input_value() == prompt
        assert page.locator("#rank-3 input[value='4']").is_checked()  # the ranks stay on the page
        assert page.locator("#session-banner").count() == 0

        switch.up()
        page.keyboard.press("Control+Enter")  # the same ranks, once the database is back
        wait_status(page, "Saved")
        assert page.locator("#prompt textarea").input_value() != prompt
    switch.down()
    store = LabelStore(db_url)
    try:
        (ranking,) = store.all_current_rankings()
    finally:
        store.close()
    assert ranking["prompt"] == prompt and ranking["username"] == "ana"
