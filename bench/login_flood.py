"""Login flood: the submit latency of logged-in labelers while many clients send wrong passwords at once.

``python -m bench.login_flood [--seconds S] [--flooders N] [--labelers L]`` starts ``python -m labeling_ui serve`` on
a fresh SQLite database. ``L`` labelers (default 4) rank back to back (``/next_item``, then ``/submit``, a short think
in between), first for ``S`` seconds alone, then for ``S`` seconds while ``N`` clients (default 32) each keep POSTing
wrong passwords to ``/login``. It prints the median and p95 submit latency of both phases, measured in the same run,
and their ratios (flood / quiet).

Each flooder connects from a loopback address of its own (127.0.0.2, 127.0.0.3, ...) and tries a new user name every
time, as a password spray from many machines would: neither the per-name nor (for its first failures) the
per-address throttle stops it, so the server really checks those passwords, and what is measured is what the
checks themselves cost the labelers. It is also the ``login_flood`` case of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from pathlib import Path

from bench.core import CaseResult, Workspace, check_target
from bench.labeling import PASSWORD, Server, call, percentile, prepare

SECONDS = 10.0  # per phase: at ~5 submits/s per labeler, a few hundred submits per phase
FLOODERS = 32  # the figure: 32 parallel bad logins made submits 44x slower (0.056 s -> 2.45 s)
LABELERS = 4
THINK = (0.05, 0.15)  # seconds between getting an item and submitting it: labelers that do not saturate the server
TARGET_RATIO = 2.0  # median submit latency under the flood, relative to without it


async def labelers(url: str, names: list[str], seconds: float, seed: int) -> list[float]:
    """Every labeler ranks items back to back for ``seconds``; the submit latencies (s) of all of them."""
    import httpx

    latencies: list[float] = []

    async def labeler(name: str, index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        session = uuid.uuid4().hex
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            (await client.post("/login", data={"username": name, "password": PASSWORD})).raise_for_status()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                item = await call(client, "next_item", [], session)
                ids = [c["id"] for c in item["candidates"]]
                ranks = dict(zip(ids, rng.sample(range(1, len(ids) + 1), len(ids)), strict=True))
                await asyncio.sleep(rng.uniform(*THINK))
                t0 = time.perf_counter()
                answer = await call(
                    client,
                    "submit",
                    [uuid.uuid4().hex, item["item_id"], json.dumps(ranks), False, "{}", "", 4.2],
                    session,
                )
                latencies.append(time.perf_counter() - t0)
                if not answer.get("ok"):
                    raise RuntimeError(f"{name}: submit refused: {answer.get('message')}")

    await asyncio.gather(*(labeler(name, i) for i, name in enumerate(names)))
    return latencies


async def flood(url: str, flooders: int, stop: asyncio.Event) -> dict[str, int]:
    """``flooders`` clients, each from its own loopback address, POST wrong passwords until ``stop``; answers by status."""
    import httpx

    statuses: dict[str, int] = {}

    async def flooder(index: int) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{index + 2}")
        async with httpx.AsyncClient(base_url=url, timeout=120, transport=transport) as client:
            while not stop.is_set():
                form = {"username": f"guess-{uuid.uuid4().hex[:8]}", "password": "wrong-password"}
                try:
                    status = str((await client.post("/login", data=form)).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == "429":  # throttled: a client that is told to wait does not hammer on meanwhile
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(flooder(i) for i in range(flooders)))
    return statuses


async def phases(url: str, names: list[str], seconds: float, flooders: int) -> dict:
    quiet = await labelers(url, names, seconds, seed=1)
    stop = asyncio.Event()
    flooding = asyncio.create_task(flood(url, flooders, stop))
    await asyncio.sleep(1.0)  # the flood is in full swing before the labelers start measuring
    loud = await labelers(url, names, seconds, seed=2)
    stop.set()
    return {"quiet": quiet, "flood": loud, "logins": await flooding}


def figures(latencies: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies]
    return {"submits": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95)}


def measure(work: Path, seconds: float, flooders: int, labeler_count: int) -> dict:
    url = f"sqlite:///{work / 'labels.db'}"
    # Enough items that nobody runs out: ~10 submits/s per labeler at most, each item ranked by 2 labelers.
    names = prepare(url, "flood", labeler_count, items=int(10 * seconds * labeler_count) + 16)
    server = Server(url, work, work / "server.log")
    try:
        out = asyncio.run(phases(server.url, names, seconds, flooders))
    finally:
        server.stop()
    quiet, loud = figures(out["quiet"]), figures(out["flood"])
    return {
        "quiet": quiet,
        "flood": loud,
        "p50_ratio": loud["p50_ms"] / quiet["p50_ms"],
        "p95_ratio": loud["p95_ms"] / quiet["p95_ms"],
        "login_answers": out["logins"],
    }


def run(ws: Workspace) -> CaseResult:
    result = CaseResult(
        "login_flood", f"Submit latency of {LABELERS} labelers while {FLOODERS} clients guess passwords"
    )
    seconds = 4.0 if ws.quick else SECONDS
    result.settings = {"seconds_per_phase": seconds, "flooders": FLOODERS, "labelers": LABELERS, "think_s": THINK}
    work = ws.work / "login_flood"
    work.mkdir(parents=True, exist_ok=True)
    out = measure(work, seconds, FLOODERS, LABELERS)
    result.runs = {"quiet": [out["quiet"]], "flood": [out["flood"]]}
    result.notes.append(f"/login answers during the flood, by HTTP status: {out['login_answers']}")
    check_target(result, "median submit latency, flood / quiet", out["p50_ratio"], "<", TARGET_RATIO)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help="Length of each phase (default: %(default)s).")
    parser.add_argument("--flooders", type=int, default=FLOODERS, help="Parallel bad logins (default: %(default)s).")
    parser.add_argument("--labelers", type=int, default=LABELERS, help="Labelers submitting (default: %(default)s).")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="login-flood-") as work:
        out = measure(Path(work), args.seconds, args.flooders, args.labelers)
    for phase in ("quiet", "flood"):
        f = out[phase]
        print(f"{phase:>6}: {f['submits']:4d} submits, p50 {f['p50_ms']:7.1f} ms, p95 {f['p95_ms']:7.1f} ms")
    print(f" ratio: p50 x{out['p50_ratio']:.2f}, p95 x{out['p95_ratio']:.2f} (flood / quiet)")
    print(f"/login answers during the flood, by HTTP status: {out['login_answers']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
