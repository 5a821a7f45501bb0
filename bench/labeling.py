"""The labeling server under load: concurrent simulated labelers over HTTP against ``python -m labeling_ui serve``.

Per database (SQLite file; PostgreSQL at 127.0.0.1:5432, a fresh database created for the case and dropped after),
one server runs as a subprocess on a free loopback port. First a ``gradio_client`` labeler checks the API contract
(``Client(url, auth=...)``, ``/next_item``, ``/submit``). Then, for each concurrency level N, N fresh labelers log
in and, all starting together, repeat: ``/next_item``, rank its candidates, ``/submit`` with a fresh submission id.
Each level runs twice: flat out (a labeler submits the moment its item arrives: the server's capacity, and latency
as a queue of N) and paced (a labeler takes ``THINK`` seconds to rank, still tens of times faster than a person: the
latency N people at work would see). Measured: submits/s over the load phase, submit latency percentiles (the client's round trip, queue included),
errors (failed calls, or ``ok: false``), CPU per call on both sides, and afterwards how many acknowledged submissions
(``ok`` and ``created``) the database holds, looked up by submission id: nothing may be lost."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from bench.core import (
    PYTHON,
    REPO,
    CaseResult,
    Comparison,
    Workspace,
    check_target,
    child_env,
    compare,
    run_rounds,
)

LEVELS = (8, 32, 64)
PASSWORD = "bench-password-1"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_P99_MS = 200.0
# Seconds a paced labeler takes to rank an item (uniform). People take tens of seconds for 4 responses, so 32 paced
# labelers send the submits of several hundred people.
THINK = (0.5, 1.5)
READY = re.compile(r"running at (http://\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def database(kind: str, work: Path):
    """A fresh database URL; a PostgreSQL database is dropped afterwards."""
    if kind == "sqlite":
        path = work / "labeling" / f"labels-{uuid.uuid4().hex[:8]}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{path}"
        return
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available() -> str | None:
    """None when PostgreSQL answers at 127.0.0.1:5432, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as error:  # any failure to connect means: skip PostgreSQL, say why
        return f"PostgreSQL at 127.0.0.1:5432 not reachable ({type(error).__name__}: {str(error).strip()[:120]})"
    return None


def prepare(url: str, prefix: str, labelers: int, items: int) -> list[str]:
    """Add ``labelers`` users and ``items`` items of 4 distinct candidates; returns the user names."""
    from labeling_ui.storage import LabelStore

    store = LabelStore(url)
    try:
        names = [f"{prefix}-{i:03d}" for i in range(labelers)]
        for name in names:
            store.add_user(name, PASSWORD, simulated=True)
        rows = [
            {
                "prompt_id": f"{prefix}-p{i}",
                "prompt": f"Customer e-mail {prefix} {i}: where is my order #{i}?",
                "candidates": [f"Reply {c} to e-mail {prefix} {i}: it ships {c + 1} days from now." for c in range(4)],
            }
            for i in range(items)
        ]
        store.import_candidates(rows)
    finally:
        store.close()
    return names


class Server:
    """``python -m labeling_ui serve`` on a free port, until ``stop()``."""

    def __init__(self, url: str, work: Path, log: Path, workers: int = 1, timings: Path | None = None):
        self.port = free_port()
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            PYTHON,
            "-m",
            "labeling_ui",
            "serve",
            "--run",
            "bench",
            "--runs_dir",
            str(work),
            "--db",
            url,
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        env = child_env() | ({"LABELING_TIMINGS": str(timings)} if timings else {})
        with open(log, "wb") as out:
            self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            match = READY.search(text)
            if match:
                self.url = match.group(1).rstrip("/.")
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"the labeling app exited with {self.process.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the labeling app did not start in 120 s:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def call(client, api: str, data: list, session: str):
    """One call of the app's API endpoint ``api`` over Gradio's HTTP protocol: POST the inputs, read the event.

    ``session``: the labeler's Gradio session id, one per labeler as a browser tab or a ``gradio_client.Client``
    keeps (without one, Gradio opens a new session for every call)."""
    response = await client.post(f"/gradio_api/call/{api}", json={"data": data, "session_hash": session})
    response.raise_for_status()
    response = await client.get(f"/gradio_api/call/{api}/{response.json()['event_id']}")
    response.raise_for_status()
    event = None
    for line in response.text.splitlines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:") and event in ("complete", "error"):
            data = json.loads(line.removeprefix("data:"))
            if event == "error":
                raise RuntimeError(f"{api}: the app answered with an error: {data}")
            return data[0]
    raise RuntimeError(f"{api}: no result in the event stream: {response.text[:200]}")


def load(server_url: str, names: list[str], submits_each: int, seed: int, think: tuple[float, float] = (0, 0)) -> dict:
    """Every labeler logs in, all wait until everyone has, then each repeats next_item + submit ``submits_each`` times,
    waiting ``think`` (uniform, seconds) between receiving an item and submitting its ranking.

    The labelers are asyncio tasks over httpx, one connection and login cookie each, calling the same endpoints
    (``/next_item``, ``/submit``) with the same arguments as ``gradio_client``. gradio_client itself spends about
    70-100 ms of CPU per call in the caller (threads, polling), three to four times what the server spends, so on a
    small machine a load generator made of it mostly measures itself.
    """
    import asyncio

    import httpx

    latencies, next_latencies, acknowledged, errors = [], [], [], []

    async def labeler(name: str, index: int, start: asyncio.Barrier) -> None:
        rng = random.Random(seed * 1000 + index)
        session = uuid.uuid4().hex
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=server_url, timeout=120, limits=limits) as client:
            try:
                (await client.post("/login", data={"username": name, "password": PASSWORD})).raise_for_status()
            except httpx.HTTPError as error:
                errors.append(f"login {name}: {type(error).__name__}: {error}")
                await start.wait()
                return
            await start.wait()
            if think[1] > 0:  # people do not all click at the same millisecond
                await asyncio.sleep(rng.uniform(0, think[1]))
            for _ in range(submits_each):
                try:
                    t0 = time.perf_counter()
                    item = await call(client, "next_item", [], session)
                    t1 = time.perf_counter()
                    if not item:
                        errors.append(f"{name}: no item left")
                        return
                    ids = [c["id"] for c in item["candidates"]]
                    ranks = dict(zip(ids, rng.sample(range(1, len(ids) + 1), len(ids)), strict=True))
                    submission_id = uuid.uuid4().hex
                    if think[1] > 0:
                        await asyncio.sleep(rng.uniform(*think))
                    t2 = time.perf_counter()
                    answer = await call(
                        client,
                        "submit",
                        [submission_id, item["item_id"], json.dumps(ranks), False, "{}", "", 4.2],
                        session,
                    )
                    t3 = time.perf_counter()
                except (httpx.HTTPError, RuntimeError, KeyError, TypeError) as error:
                    errors.append(f"{name}: {type(error).__name__}: {str(error)[:200]}")
                    continue
                next_latencies.append(t1 - t0)
                latencies.append(t3 - t2)
                if answer.get("ok") and answer.get("created"):
                    acknowledged.append(submission_id)
                else:
                    errors.append(f"{name}: {answer.get('message')}")

    async def main() -> float:
        start = asyncio.Barrier(len(names) + 1)
        tasks = [asyncio.create_task(labeler(name, i, start)) for i, name in enumerate(names)]
        await start.wait()
        t0 = time.perf_counter()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    return {
        "latencies": latencies,
        "next_latencies": next_latencies,
        "acknowledged": acknowledged,
        "errors": errors,
        "elapsed": elapsed,
    }


def contract_check(server_url: str, name: str, submits: int = 3) -> list[str]:
    """The API as the contract gives it, through ``gradio_client``: problems found (none: an empty list)."""
    from gradio_client import Client

    problems = []
    client = Client(server_url, auth=(name, PASSWORD), verbose=False)
    try:
        for _ in range(submits):
            item = client.predict(api_name="/next_item")
            ids = [c["id"] for c in item["candidates"]]
            ranks = json.dumps({cid: rank for rank, cid in enumerate(ids, start=1)})
            answer = client.predict(uuid.uuid4().hex, item["item_id"], ranks, False, "{}", "", 1.0, api_name="/submit")
            if not (answer.get("ok") and answer.get("created")):
                problems.append(f"gradio_client submit answered {answer}")
    except Exception as error:  # whatever breaks the contract is reported, not raised
        problems.append(f"gradio_client: {type(error).__name__}: {error}")
    finally:
        client.close()
    return problems


def stored(url: str, submission_ids: list[str]) -> int:
    """How many of ``submission_ids`` the database holds."""
    import sqlalchemy as sa

    from labeling_ui.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = set(conn.scalars(sa.text("SELECT submission_id FROM rankings")))
    finally:
        engine.dispose()
    return sum(sid in found for sid in submission_ids)


def databases(result: CaseResult) -> list[str]:
    """SQLite, and PostgreSQL when it answers (else a note says why it was left out)."""
    why_not_pg = postgres_available()
    if why_not_pg:
        result.notes.append(f"PostgreSQL skipped: {why_not_pg}")
        return ["sqlite"]
    return ["sqlite", "postgresql"]


def run(ws: Workspace) -> CaseResult:
    result = CaseResult("labeling", "Labeling server under load: concurrent labelers over HTTP")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # One round per level: a round is long (logins, then ``total`` submits), and its percentiles already pool many
    # requests.
    total = 48 if ws.quick else 192  # submits per level
    levels = (8, 32) if ws.quick else LEVELS
    kinds = databases(result)
    result.settings = {
        "levels": list(levels),
        "submits_per_level": total,
        "rounds": 1,
        "candidates_per_item": 4,
        "overlap": 2,
        "client": "httpx (asyncio), Gradio's /gradio_api/call protocol, one "
        "connection and login per labeler; gradio_client for the contract check",
    }

    for kind in kinds:
        with database(kind, ws.work) as url:
            server = Server(url, ws.work, ws.work / "labeling" / f"server-{kind}.log")
            try:
                problems = contract_check(server.url, prepare(url, f"{kind}-contract", 1, 8)[0])
                result.notes += [f"{kind}: {problem}" for problem in problems]
                check_target(
                    result, f"{kind}: gradio_client contract check (3 submits), problems", len(problems), "==", 0
                )
                variants = {f"{kind}_{n}": level_runner(url, server, kind, n, total) for n in levels}
                variants |= {f"{kind}_{n}_paced": level_runner(url, server, kind, n, total, THINK) for n in levels}
                run_rounds(result, variants, repeats=1, warmup=0)
            finally:
                server.stop()
    for kind in kinds:
        runs = result.runs.get(f"{kind}_32_paced", [])
        if kind == "sqlite" and runs:
            check_target(
                result,
                f"SQLite, 32 labelers ranking in {THINK[0]}-{THINK[1]} s: p99 submit latency",
                max(r["p99_ms"] for r in runs),
                "<",
                TARGET_P99_MS,
                " ms",
            )
        runs = result.runs.get(f"{kind}_32", []) + runs
        if runs:
            check_target(result, f"{kind}, 32 labelers: errors", sum(r["errors"] for r in runs), "==", 0)
    for name, runs in result.runs.items():
        check_target(result, f"{name}: acknowledged but not stored", sum(r["lost"] for r in runs), "==", 0)
    result.notes.append(
        "The load generator runs in the bench's process on the same cores as the server; its CPU per call "
        "(client_cpu_ms_per_request) is small next to the server's (server_cpu_ms_per_request)."
    )
    return result


def level_runner(url: str, server: Server, kind: str, labelers: int, total: int, think=(0.0, 0.0)):
    import psutil

    def go(round_: int) -> dict[str, float]:
        submits_each = max(total // labelers, 2)
        prefix = f"{kind}{labelers}r{round_}-{uuid.uuid4().hex[:4]}"
        # Enough items that nobody runs out: each item takes `overlap` (2) labelers.
        names = prepare(url, prefix, labelers, items=labelers * submits_each // 2 + labelers + 8)
        server_cpu, client_cpu = _tree_cpu(psutil.Process(server.process.pid)), _cpu(psutil.Process())
        out = load(server.url, names, submits_each, seed=round_, think=think)
        server_cpu, client_cpu = (
            _tree_cpu(psutil.Process(server.process.pid)) - server_cpu,
            _cpu(psutil.Process()) - client_cpu,
        )
        requests = max(len(out["latencies"]) + len(out["next_latencies"]), 1)
        found = stored(url, out["acknowledged"])
        if out["errors"]:
            print(f"    {len(out['errors'])} error(s), first: {out['errors'][0]}", flush=True)
        lat = [x * 1000 for x in out["latencies"]] or [float("nan")]
        nxt = [x * 1000 for x in out["next_latencies"]] or [float("nan")]
        return {
            "labelers": labelers,
            "think_s": list(think),
            "sent": labelers * submits_each,
            "acknowledged": len(out["acknowledged"]),
            "stored": found,
            "lost": len(out["acknowledged"]) - found,
            "errors": len(out["errors"]),
            "submits_per_s": len(out["latencies"]) / out["elapsed"],
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "mean_ms": statistics.mean(lat),
            "next_item_p50_ms": percentile(nxt, 50),
            "next_item_p99_ms": percentile(nxt, 99),
            "load_s": out["elapsed"],
            "server_cpu_ms_per_request": 1000 * server_cpu / requests,
            "client_cpu_ms_per_request": 1000 * client_cpu / requests,
        }

    return go


def _cpu(process) -> float:
    """CPU seconds (user + system) of a process, all its threads."""
    times = process.cpu_times()
    return times.user + times.system


def _tree_cpu(process) -> float:
    """CPU seconds of a process and its children (the app processes and nginx under ``--workers``)."""
    return _cpu(process) + sum(_cpu(child) for child in process.children(recursive=True))


# --- several app processes (case `labeling_workers`) ---------------------------------------------------------------

TARGET_WORKERS_SPEEDUP = (">=", 1.6)


def run_workers(ws: Workspace) -> CaseResult:
    """``serve --workers 2`` (two app processes behind nginx) against one process, on PostgreSQL, flat out: 32
    labelers submitting as soon as their item arrives. Rounds alternate the two; each round's ratio is compared."""
    result = CaseResult("labeling_workers", "Labeling: 2 app processes behind nginx vs 1, PostgreSQL, flat out")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    why = postgres_available()
    if why:
        result.skipped = why
        return result
    labelers, total = (16, 64) if ws.quick else (32, 192)
    result.settings = {"labelers": labelers, "submits_per_round": total, "think_s": [0, 0], "database": "postgresql"}
    with database("postgresql", ws.work) as url:
        servers = {n: Server(url, ws.work / f"w{n}", ws.work / "labeling" / f"workers-{n}.log", n) for n in (1, 2)}
        try:
            variants = {
                f"{n}_process{'es' if n > 1 else ''}": level_runner(url, s, f"w{n}", labelers, total)
                for n, s in servers.items()
            }
            run_rounds(result, variants, **ws.rounds())
        finally:
            for server in servers.values():
                server.stop()
    compare(
        result,
        Comparison("2 processes / 1 submits/s", "submits_per_s", "2_processes", "1_process", TARGET_WORKERS_SPEEDUP),
    )
    compare(result, Comparison("2 processes / 1 submit p99", "p99_ms", "2_processes", "1_process"))
    result.notes.append(
        "Both servers run at once (idle between their rounds) on the same cores as the load generator; the machine "
        "has 2 cores, which the 2 app processes, nginx, PostgreSQL and the load generator share."
    )
    return result


# --- at scale: 100k items, 200 labelers (case `labeling_scale`) ----------------------------------------------------

SCALE_ITEMS, SCALE_LABELERS, SCALE_PACED = 100_000, 200, 32
TARGET_NEXT_P99_MS = 200.0
TARGET_CPU_MS = 10.0  # server CPU per request


def store_latencies(url: str, names: list[str], calls: int) -> dict[str, float]:
    """``LabelStore.assign`` (the next item with its progress) and ``submit_ranking`` in this process, no HTTP:
    what the database work of one call costs, labelers taking turns."""
    from labeling_ui.rules import Submission
    from labeling_ui.storage import LabelStore

    store = LabelStore(url)
    next_ms, submit_ms = [], []
    try:
        for i in range(calls):
            name = names[i % len(names)]
            t0 = time.perf_counter()
            view = store.next_item(name)
            t1 = time.perf_counter()
            ranks = {cid: r for r, (cid, _) in enumerate(view.candidates, start=1)}
            store.submit_ranking(name, Submission(uuid.uuid4().hex, view.item_id, ranks))
            t2 = time.perf_counter()
            next_ms.append(1000 * (t1 - t0))
            submit_ms.append(1000 * (t2 - t1))
    finally:
        store.close()
    return {
        "store_next_item_p50_ms": percentile(next_ms, 50),
        "store_next_item_p99_ms": percentile(next_ms, 99),
        "store_submit_p50_ms": percentile(submit_ms, 50),
        "store_submit_p99_ms": percentile(submit_ms, 99),
    }


def hold_items(url: str, names: list[str]) -> None:
    """Each of ``names`` is handed an item and keeps it (a lease of 2 minutes): labelers at work elsewhere."""
    from labeling_ui.storage import LabelStore

    store = LabelStore(url)
    try:
        for name in names:
            store.next_item(name)
    finally:
        store.close()


def versions_per_ranking(url: str) -> int:
    """The most rows any (labeler, item) has: 1 when no retry or stale page turned into a second version."""
    import sqlalchemy as sa

    from labeling_ui.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT max(n) FROM (SELECT count(*) AS n FROM rankings GROUP BY item_id, user_id) AS per_pair"
            return conn.execute(sa.text(query)).scalar() or 0
    finally:
        engine.dispose()


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, as `make setup` installs it for the browser tests
# In the page: click Submit, then wait for another item's key and two animation frames (the frame after the one that
# shows it has been painted). Milliseconds from the click, or -1 when no new item came within 30 s.
SUBMIT_TO_PAINT_JS = """() => new Promise(resolve => {
  const key = () => document.querySelector('#item-key textarea, #item-key input')?.value;
  const before = key(), t0 = performance.now();
  document.querySelector('#submit-btn').click();
  const check = () => {
    if (performance.now() - t0 > 30000) return resolve(-1);
    const now = key();
    if (now && now !== before && now !== 'loading')
      return requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now() - t0)));
    requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})"""


def browser_labeler(url: str, name: str, ready, stop, waits: list[float], errors: list[str]) -> None:
    """One labeler in a real Chromium (Playwright), in a thread beside the load: logs in, sets ``ready``, then until
    ``stop`` ranks the item shown by keyboard, clicks Submit and times, in the page, from the click to the next
    item painted; a second's pause between items."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(url)
            page.get_by_label("username").fill(name)
            page.get_by_label("password").fill(PASSWORD)
            page.get_by_role("button", name="Login").click()
            page.wait_for_function(
                "(document.querySelector('#item-key textarea, #item-key input')?.value ?? 'loading') !== 'loading'",
                timeout=60_000,
            )
            ready.set()
            while not stop.is_set():
                page.locator("#hint").click()
                page.keyboard.press("a")
                for rank in "1234":  # the bench's items have 4 replies
                    page.keyboard.press(rank)
                ms = page.evaluate(SUBMIT_TO_PAINT_JS)
                if ms < 0:
                    errors.append(f"browser: no next item 30 s after Submit ({page.inner_text('#status')[:120]})")
                    break
                waits.append(ms)
                page.wait_for_timeout(1000)
            browser.close()
    except Exception as error:  # the browser's figures are missing then; the case says why
        errors.append(f"browser: {type(error).__name__}: {str(error)[:300]}")
    finally:
        ready.set()


def where_time_goes(timings: Path, http: dict[str, float]) -> dict[str, float]:
    """The server's own timings of each call (``LABELING_TIMINGS``, labeling_ui/timing.py) beside the client's: per
    API, the handler's and the store's wall time (p50, p99) and CPU (mean, ms); then what is Gradio's, the server CPU
    per request beyond the handlers' and, at the median, what a client waits beyond its handler."""
    rows = [json.loads(line) for path in timings.parent.glob(timings.name + ".*") for line in path.open()]
    out: dict[str, float] = {}
    for api, client_p50 in (("next_item", http["next_item_p50_ms"]), ("submit", http["p50_ms"])):
        mine = [r for r in rows if r["api"] == api]
        if not mine:
            continue
        ms = {k: [1000 * r[k] for r in mine] for k in ("wall_s", "cpu_s", "store_wall_s", "store_cpu_s")}
        out |= {
            f"{api}_handler_p50_ms": percentile(ms["wall_s"], 50),
            f"{api}_handler_p99_ms": percentile(ms["wall_s"], 99),
            f"{api}_store_p50_ms": percentile(ms["store_wall_s"], 50),
            f"{api}_store_p99_ms": percentile(ms["store_wall_s"], 99),
            f"{api}_handler_cpu_ms": statistics.mean(ms["cpu_s"]),
            f"{api}_store_cpu_ms": statistics.mean(ms["store_cpu_s"]),
            f"{api}_gradio_p50_ms": client_p50 - percentile(ms["wall_s"], 50),
        }
    page = [r for r in rows if r["api"] == "on_submit"]  # the Chromium labeler's Submit: the page's own event
    if page:
        out |= {
            "browser_on_submit_handler_p50_ms": percentile([1000 * r["wall_s"] for r in page], 50),
            "browser_on_submit_store_p50_ms": percentile([1000 * r["store_wall_s"] for r in page], 50),
            "browser_on_submit_handler_cpu_ms": 1000 * statistics.mean(r["cpu_s"] for r in page),
        }
    rows = [r for r in rows if not r["api"].startswith("on_")]  # the load's API calls, for the CPU per request
    if rows:
        handler_cpu = 1000 * sum(r["cpu_s"] for r in rows) / len(rows)
        out["handler_cpu_ms_per_request"] = handler_cpu
        out["gradio_cpu_ms_per_request"] = http["server_cpu_ms_per_request"] - handler_cpu
    return out


def run_scale(ws: Workspace) -> CaseResult:
    """100k items and 200 labelers on each database, 168 of them each holding an item (a live lease): what one
    next_item and one submit of the other 32 cost in the store (at 1k items too: assignment reads the queue index,
    so the two should match), then the 32 paced over HTTP, every acknowledged submission looked up afterwards."""
    import psutil

    result = CaseResult("labeling_scale", "Labeling at scale: 100k items, 200 labelers, 32 paced over HTTP")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    items, labelers, paced = (10_000, 48, 16) if ws.quick else (SCALE_ITEMS, SCALE_LABELERS, SCALE_PACED)
    submits_each, calls = (4, 100) if ws.quick else (6, 400)
    kinds = databases(result)
    result.settings = {
        "items": items,
        "labelers": labelers,
        "paced_labelers": paced,
        "think_s": list(THINK),
        "submits_per_paced_labeler": submits_each,
        "store_calls": calls,
        "candidates_per_item": 4,
        "overlap": 2,
    }
    for kind in kinds:
        runs: dict[str, dict[str, float]] = {}
        with database(kind, ws.work) as small:
            names = prepare(small, f"{kind}-small", 8, 1_000)
            runs[f"{kind}_store_1k"] = {"items": 1_000, **store_latencies(small, names, calls)}
        with database(kind, ws.work) as url:
            started = time.perf_counter()
            names = prepare(url, f"{kind}-scale", labelers, items)
            prepare_s = time.perf_counter() - started
            hold_items(url, names[paced:])
            runs[f"{kind}_store_{items // 1000}k"] = {
                "items": items,
                "prepare_s": prepare_s,
                **store_latencies(url, names[:paced], calls),
            }
            timings = ws.work / "labeling" / f"timings-{kind}"
            server = Server(url, ws.work, ws.work / "labeling" / f"server-scale-{kind}.log", timings=timings)
            try:
                ready, stop, waits, browser_errors = threading.Event(), threading.Event(), [], []
                browser = threading.Thread(
                    target=browser_labeler,
                    args=(server.url, names[-1], ready, stop, waits, browser_errors),
                    daemon=True,
                )
                if CHROMIUM.exists():
                    browser.start()
                    ready.wait(120)
                else:
                    browser_errors.append(f"no {CHROMIUM} (make setup installs it): no browser figures")
                process = psutil.Process(server.process.pid)
                server_cpu = _cpu(process)
                out = load(server.url, names[:paced], submits_each, seed=0, think=THINK)
                server_cpu = _cpu(process) - server_cpu
                stop.set()
                if browser.is_alive():
                    browser.join(60)
            finally:
                server.stop()
            found = stored(url, out["acknowledged"])
            if out["errors"]:
                print(f"    {len(out['errors'])} error(s), first: {out['errors'][0]}", flush=True)
            lat = [x * 1000 for x in out["latencies"]] or [float("nan")]
            nxt = [x * 1000 for x in out["next_latencies"]] or [float("nan")]
            requests = max(len(out["latencies"]) + len(out["next_latencies"]), 1)
            runs[f"{kind}_{paced}_paced_{items // 1000}k"] = {
                "items": items,
                "labelers": paced,
                "holding_items": labelers - paced,
                "sent": paced * submits_each,
                "acknowledged": len(out["acknowledged"]),
                "stored": found,
                "lost": len(out["acknowledged"]) - found,
                "max_versions_per_ranking": versions_per_ranking(url),
                "errors": len(out["errors"]),
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "next_item_p50_ms": percentile(nxt, 50),
                "next_item_p99_ms": percentile(nxt, 99),
                "server_cpu_ms_per_request": 1000 * server_cpu / requests,
                "browser_submits": len(waits),
                "browser_submit_to_paint_p50_ms": percentile(waits, 50) if waits else float("nan"),
                "browser_submit_to_paint_p95_ms": percentile(waits, 95) if waits else float("nan"),
            }
            for error in browser_errors:
                print(f"    {error}", flush=True)
                result.notes.append(f"{kind}: {error}")
            runs[f"{kind}_{paced}_paced_{items // 1000}k"].update(
                where_time_goes(timings, runs[f"{kind}_{paced}_paced_{items // 1000}k"])
            )
        for name, metrics in runs.items():
            print(f"  [labeling_scale] {name}: {json.dumps({k: round(v, 1) for k, v in metrics.items()})}", flush=True)
            result.runs[name] = [{"round": 0, **metrics}]
        http = runs[f"{kind}_{paced}_paced_{items // 1000}k"]
        where = f"{kind}, {items // 1000}k items, {paced} paced labelers"
        check_target(result, f"{where}: next_item p99", http["next_item_p99_ms"], "<", TARGET_NEXT_P99_MS, " ms")
        check_target(result, f"{where}: submit p99", http["p99_ms"], "<", TARGET_P99_MS, " ms")
        wait = http["browser_submit_to_paint_p95_ms"]
        check_target(result, f"{where}: Chromium, Submit to next item painted, p95", wait, "<=", 300.0, " ms")
        cpu = http["server_cpu_ms_per_request"]
        check_target(result, f"{where}: server CPU per request", cpu, "<=", TARGET_CPU_MS, " ms")
        check_target(result, f"{where}: errors", http["errors"], "==", 0)
        check_target(result, f"{where}: acknowledged but not stored", http["lost"], "==", 0)
        check_target(result, f"{where}: versions per (labeler, item)", http["max_versions_per_ranking"], "==", 1)
    result.notes.append(
        "store_* figures: LabelStore.assign / submit_ranking in the bench's process (no HTTP), the same labelers "
        "taking turns; at 1k and at the full size they show whether assignment cost grows with the items."
    )
    result.notes.append(
        "Where an HTTP call's time goes (the server's LABELING_TIMINGS log): <api>_handler_* is the app's route "
        "function, <api>_store_* the store's transactions within it (waiting for the write lock included), "
        "<api>_gradio_p50_ms what the client waits at the median beyond the handler's median (HTTP, Gradio's queue "
        "and event stream), gradio_cpu_ms_per_request the server's CPU per request beyond its handlers'."
    )
    return result
