"""Start the labeling app (``python -m labeling_ui serve``) as a subprocess on a free port and wait until it serves.

Used by the app, browser and durability tests; also handy by hand:

    from tests.labeling_server import LabelingServer
    with LabelingServer("sqlite:////tmp/labels.db", runs_dir="/tmp/runs") as server:
        print(server.url, server.admin_password)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labeling_ui.config import LabelingConfig

REPO = Path(__file__).resolve().parent.parent
# The demo's gold rubric, named explicitly as configs/pipeline.yaml names it: labeling_ui itself has no default rubric.
HOUSE_STYLE = "pipeline.demo.rubric:house_style_score"
READY = re.compile(r"running at (http://\S+)")
ADMIN_PASSWORD = re.compile(r"Log in as 'admin' with password: (\S+)")
# Debian's Chromium, driven by Playwright; the flags keep it quiet and off the network on a 2-core machine.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)


@contextlib.contextmanager
def chromium():
    """A headless Chromium, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelingServer:
    """The app against ``db_url``; ``start()`` waits for its "running at URL" line, ``kill()`` sends SIGKILL.

    The same port is kept across restarts, so clients reconnect to the same URL. The output of every start is
    appended to ``log``.
    """

    def __init__(self, db_url: str, runs_dir: str | Path, run: str = "test", config: str | Path | None = None):
        self.db_url, self.runs_dir, self.run = db_url, Path(runs_dir), run
        self.config = config or REPO / "configs" / "labeling.yaml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.runs_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.admin_password: str | None = None  # printed on the first start against a database without an admin

    def start(self, timeout: float = 90) -> LabelingServer:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "labeling_ui",
            "serve",
            "--run",
            self.run,
            "--runs_dir",
            str(self.runs_dir),
            "--db",
            self.db_url,
            "--config",
            str(self.config),
            "--port",
            str(self.port),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output(offset)
            if READY.search(output):
                password = ADMIN_PASSWORD.search(output)
                if password:
                    self.admin_password = password.group(1)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"The labeling app exited with {self.process.returncode}:\n{output}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"The labeling app did not start within {timeout} s:\n{self.output(offset)}")

    def output(self, offset: int = 0) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or clean up, as in a power cut of the app (not the disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LabelingServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def question_rows(n: int, k: int = 4, prefix: str = "q") -> list[dict]:
    """``n`` items of ``k`` plain candidates, as ``LabelStore.import_candidates`` takes them."""
    return [
        {
            "prompt_id": f"{prefix}{i}",
            "prompt": [{"role": "user", "content": f"Question {prefix}{i}?"}],
            "candidates": [f"Answer {j} to question {prefix}{i}." for j in range(k)],
        }
        for i in range(n)
    ]


def store_config(lease_seconds: float | None = None, max_candidates: int | None = None, **checked) -> LabelingConfig:
    """A ``LabelingConfig`` for a test's store: ``checked`` values pass the config's checks as the app's do, while
    ``lease_seconds`` and ``max_candidates`` may go past them on purpose: a lease of 1 s runs out within a test, and an
    item larger than the page stands for one imported before that limit."""
    config = LabelingConfig(**checked)
    if lease_seconds is not None:
        config.lease_seconds = lease_seconds
    if max_candidates is not None:
        config.max_candidates = max_candidates
    return config


class ApiClient:
    """The app's API over plain HTTP: log in (cookie), then ``POST /gradio_api/call/NAME`` and read the event stream.

    Every request has a timeout and nothing is retried here, so a test sees exactly which calls were answered.
    """

    def __init__(self, url: str, username: str, password: str, timeout: float = 30, login: bool = True):
        self.username, self.password = username, password
        self.http = httpx.Client(base_url=url, timeout=timeout)  # one per client: creating one costs ~50 ms of CPU
        if login:
            self.login()

    def login(self) -> None:
        """Log in (again: sessions live in the server's memory and die with it)."""
        self.http.cookies.clear()
        response = self.http.post("/login", data={"username": self.username, "password": self.password})
        if response.status_code != 200:
            raise PermissionError(f"Login as {self.username!r} refused: {response.status_code} {response.text}")

    def call(self, api_name: str, *args):
        response = self.http.post(f"/gradio_api/call/{api_name}", json={"data": list(args)})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        response = self.http.get(f"/gradio_api/call/{api_name}/{event_id}")
        response.raise_for_status()
        event = None
        for line in response.text.splitlines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("complete", "error"):
                data = json.loads(line.removeprefix("data: "))
                if event == "error":
                    raise RuntimeError(f"/{api_name} failed: {data}")
                return data[0]
        raise RuntimeError(f"/{api_name}: no result in {response.text[:200]!r}")

    def close(self) -> None:
        self.http.close()
