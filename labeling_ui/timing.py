"""Where a request's time goes on the server: each API call's handler and, within it, the store's transactions.

Off unless the environment names a file, ``LABELING_TIMINGS=PATH``: the server then writes one JSON line per API
call (and per load and Submit of the page, as ``on_load`` and ``on_submit``), ``{"api", "wall_s", "cpu_s", "store_wall_s", "store_cpu_s"}``, to ``PATH.<pid>`` (one file per app process).
CPU is the handler thread's own (``time.thread_time``): what a request costs the process, apart from the time it
waits for the GIL or a lock. What a client waits beyond ``wall_s``, and what the process spends beyond ``cpu_s``, is
Gradio's: the HTTP requests, its queue, the event stream. ``python -m bench --cases labeling_scale`` reads it.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "LABELING_TIMINGS"

_local = threading.local()


class CallLog:
    """The timings of every API call of this process, appended to its file as each call ends."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def add(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        with self._lock, self.path.open("a") as out:
            out.write(line)


def _open_log() -> CallLog | None:
    path = os.environ.get(ENV)
    return CallLog(Path(f"{path}.{os.getpid()}")) if path else None


LOG = _open_log()


def timed(api: str, fn: Callable) -> Callable:
    """``fn`` as an API route or a page's event handler, timed when the log is on (the same function when it is
    off)."""
    if LOG is None:
        return fn

    @functools.wraps(fn)  # Gradio reads the route's parameters from the signature this keeps
    def wrapper(*args, **kwargs):
        _local.store = [0.0, 0.0]
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            store_wall, store_cpu = _local.store
            LOG.add(
                {
                    "api": api,
                    "wall_s": time.perf_counter() - wall,
                    "cpu_s": time.thread_time() - cpu,
                    "store_wall_s": store_wall,
                    "store_cpu_s": store_cpu,
                }
            )

    return wrapper


@contextmanager
def store_time() -> Iterator[None]:
    """Counts the block as the store's, inside a timed call (a transaction, waiting for its lock included)."""
    spent = getattr(_local, "store", None) if LOG is not None else None
    if spent is None:
        yield
        return
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        spent[0] += time.perf_counter() - wall
        spent[1] += time.thread_time() - cpu
