"""Several app processes behind nginx (``serve --workers N``): a labeler's session, lease and draft are the same in
every process, and no acknowledged submission is lost or stored twice when a process is killed mid-session.

The app runs as ``python -m labeling_ui serve --workers 2`` on a fresh PostgreSQL database, behind a real nginx; the
clients reach it through nginx, or one process directly (its port is in the nginx config the command wrote).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa

from labeling_ui.config import LabelingConfig
from labeling_ui.db import Ranking, User, make_engine
from labeling_ui.storage import LabelStore
from labeling_ui.workers import check_free, check_workers, find_nginx
from tests.labeling_server import ADMIN_PASSWORD, READY, REPO, ApiClient, free_port, question_rows

NGINX = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if Path(p).exists()), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="no nginx (apt-get install nginx; make setup installs it)")


def test_more_than_one_process_is_refused_on_sqlite_with_why(tmp_path):
    with pytest.raises(ValueError, match=r"--workers 2 needs PostgreSQL: SQLite lets one process write at a time"):
        check_workers(2, f"sqlite:///{tmp_path / 'labels.db'}")
    check_workers(1, f"sqlite:///{tmp_path / 'labels.db'}")
    check_workers(4, "postgresql://postgres@127.0.0.1:5432/labels")
    command = [sys.executable, "-m", "labeling_ui", "serve", "--workers", "2", "--runs_dir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--workers 2 needs PostgreSQL" in done.stderr + done.stdout


def test_a_missing_proxy_and_a_port_in_use_are_named():
    with pytest.raises(FileNotFoundError, match=r"no 'no-such-nginx' on PATH.*apt-get install nginx"):
        find_nginx("no-such-nginx")
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(ValueError, match=rf"Cannot listen on 127\.0\.0\.1:{port}: .*--port N"):
            check_free("127.0.0.1", port)


# Several app processes serve PostgreSQL only: conftest's db_url, its PostgreSQL variant (skipped when unreachable).
on_postgresql = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


class Served:
    """``serve --workers 2`` as a subprocess: its URL (nginx), the two processes' ports, the admin's password."""

    def __init__(self, db_url: str, tmp_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        command = [
            *(sys.executable, "-m", "labeling_ui", "serve", "--workers", "2", "--run", "team"),
            *("--runs_dir", str(tmp_path / "runs"), "--db", db_url, "--port", str(self.port)),
        ]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not READY.search(self.log.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve --workers 2 did not start:\n{self.log.read_text()}")
            time.sleep(0.2)
        self.admin_password = ADMIN_PASSWORD.search(self.log.read_text()).group(1)
        conf = (tmp_path / "runs" / "team" / "labeling" / "nginx" / "nginx.conf").read_text()
        self.app_ports = [int(p) for p in re.findall(r"server 127\.0\.0\.1:(\d+)", conf)]

    def app_pid(self, port: int) -> int:
        for child in psutil.Process(self.process.pid).children():
            if str(port) in child.cmdline():
                return child.pid
        raise LookupError(f"no app process on port {port}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def on_port(client: ApiClient, port: int) -> ApiClient:
    """The same login, talking to one app process directly instead of through nginx."""
    other = ApiClient(f"http://127.0.0.1:{port}", client.username, client.password, login=False)
    other.http.cookies.update(client.http.cookies)
    return other


@needs_nginx
@on_postgresql
def test_a_session_its_lease_and_its_draft_are_the_same_in_every_process(db_url, tmp_path):
    store = LabelStore(db_url)
    store.import_candidates(question_rows(4))
    store.add_user("ana", "ana-password")
    store.close()
    served = Served(db_url, tmp_path)
    try:
        ana = ApiClient(served.url, "ana", "ana-password")  # logged in through nginx, by one of the processes
        one, two = (on_port(ana, port) for port in served.app_ports)
        item = one.call("next_item")
        assert two.call("next_item")["item_id"] == item["item_id"]  # the same item in hand, held in both
        assert two.call("heartbeat", item["item_id"]) == {"ok": True}
        ranks = [1, 2, None, None]
        assert one.call("draft", item["item_id"], json.dumps(ranks), json.dumps([[0], [], [], []]), False, "half")
        store = LabelStore(db_url)
        try:
            draft = store.draft("ana", item["item_id"])
        finally:
            store.close()
        assert draft["comment"] == "half" and sorted(draft["ranks"].values()) == [1, 2]
        order = {c["id"]: rank for rank, c in enumerate(item["candidates"], start=1)}
        answer = two.call("submit", uuid.uuid4().hex, item["item_id"], json.dumps(order), False, "{}", "", 4.0)
        assert answer["ok"] and answer["created"]
        assert one.call("next_item")["item_id"] != item["item_id"]  # process one sees the submit of process two
        for client in (ana, one, two):
            client.close()
    finally:
        served.stop()


@needs_nginx
@on_postgresql
def test_no_acknowledged_submission_is_lost_or_doubled_when_a_process_is_killed(db_url, tmp_path):
    store = LabelStore(db_url, LabelingConfig(overlap=1))
    store.import_candidates(question_rows(60))
    names = [f"lab{i}" for i in range(4)]
    for name in names:
        store.add_user(name, f"{name}-password")
    store.close()
    served = Served(db_url, tmp_path)
    acknowledged: dict[str, list[str]] = {name: [] for name in names}
    errors: list[str] = []

    def label(name: str, submits: int = 12) -> None:
        client = ApiClient(served.url, name, f"{name}-password", timeout=60, login=False)
        deadline = time.monotonic() + 120
        while True:  # a login that meets the killed process (before it, requests go by address) is tried again
            try:
                client.login()
                break
            except (httpx.HTTPError, PermissionError) as error:
                if time.monotonic() > deadline:
                    errors.append(f"{name}: {error}")
                    return
                time.sleep(0.5)
        for _ in range(submits):
            submission_id = uuid.uuid4().hex
            deadline = time.monotonic() + 120
            while True:  # a request lost with its process is sent again, with the same submission id
                try:
                    item = client.call("next_item")
                    ranks = {c["id"]: rank for rank, c in enumerate(item["candidates"], start=1)}
                    answer = client.call(
                        "submit", submission_id, item["item_id"], json.dumps(ranks), False, "{}", "", 3.0
                    )
                    break
                except (httpx.HTTPError, RuntimeError) as error:
                    if time.monotonic() > deadline:
                        errors.append(f"{name}: {error}")
                        return
                    time.sleep(0.5)
            if answer["ok"]:
                acknowledged[name].append(item["item_id"])
            elif not answer["stale"]:
                errors.append(f"{name}: {answer}")
        client.close()

    try:
        threads = [threading.Thread(target=label, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        while sum(map(len, acknowledged.values())) < 4:  # the labelers are at work ...
            time.sleep(0.05)
        os.kill(served.app_pid(served.app_ports[0]), signal.SIGKILL)  # ... when one process dies, whoever it serves
        for thread in threads:
            thread.join(timeout=400)
        deadline = time.monotonic() + 60
        while "exited with code -9; starting it again" not in served.log.read_text():
            assert time.monotonic() < deadline, served.log.read_text()
            time.sleep(0.2)
    finally:
        served.stop()
    assert errors == []
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:  # every stored row, not only the current ones
            query = sa.select(User.username, Ranking.item_id).join(User, User.id == Ranking.user_id)
            stored = [tuple(row) for row in connection.execute(query)]
    finally:
        engine.dispose()
    assert len(stored) == len(set(stored))  # nothing stored twice
    assert sorted(stored) == sorted((name, item) for name, items in acknowledged.items() for item in items)
    assert sum(map(len, acknowledged.values())) >= 4 * 10  # most submits went through, around the kill
