"""Several app processes behind nginx, for teams larger than one process serves: ``serve --workers N``.

One app process answers every request of a login (Gradio keeps a page's session, its queue and state, in the
process that served it), so nginx sends each session cookie to one process (configs/nginx/labeling.conf: a
consistent hash of the cookie). Labels, leases, drafts and sessions live in the database and the run's session
secret, shared by all the processes: a labeler whose process is restarted goes on where they were. That needs a
database several processes can write at once, so SQLite is refused.

``serve_workers`` checks its inputs, starts the N processes on free loopback ports and nginx on the app's address,
restarts a process that dies, and stops them all on Ctrl+C.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from labeling_ui.config import LabelingConfig
from labeling_ui.export import ExportConfig
from labeling_ui.server import ensure_admin, open_store, users_command
from pipeline.lib import runs

REPO = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = REPO / "configs" / "nginx" / "labeling.conf"
START_SECONDS = 120  # an app process loads Gradio and migrates the database before it listens


def check_workers(workers: int, db_url: str) -> None:
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}.")
    if workers > 1 and db_url.startswith("sqlite"):
        raise ValueError(
            f"--workers {workers} needs PostgreSQL: SQLite lets one process write at a time, and {workers} app "
            "processes would queue behind each other's writes. Serve with --db postgresql://USER@HOST/DB (make label "
            'ARGS="--db ..."), or with one process (--workers 1).'
        )


def find_nginx(binary: str = "nginx") -> str:
    found = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}",) if Path(p).exists()), None)
    if found is None:
        raise FileNotFoundError(
            f"--workers needs nginx, and there is no {binary!r} on PATH or in /usr/sbin: apt-get install nginx "
            "(make setup installs it)."
        )
    return found


def check_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(
                f"Cannot listen on {host}:{port}: {error.strerror}. Pick another port with --port N "
                '(make label ARGS="--port N").'
            ) from error


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def nginx_config(prefix: Path, host: str, port: int, app_ports: list[int]) -> str:
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    upstreams = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in app_ports)
    text = NGINX_TEMPLATE.read_text()
    return text.replace("@PREFIX@", str(prefix)).replace("@LISTEN@", listen).replace("@UPSTREAMS@", upstreams)


def wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = START_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"An app process exited with code {process.returncode} as it started: see {log}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"An app process did not listen on 127.0.0.1:{port} within {timeout:.0f} s: see {log}")


class Workers:
    """The N app processes and nginx: started, watched (a dead app process is started again), stopped."""

    def __init__(self, config_path: str, db_url: str, export_config: ExportConfig, host: str, port: int, n: int):
        self.config_path, self.db_url, self.export_config = config_path, db_url, export_config
        self.host, self.port = host, port
        self.folder = runs.stage_dir(export_config.run, "labeling", export_config.runs_dir) / "nginx"
        self.ports = free_ports(n)
        self.apps: list[subprocess.Popen | None] = [None] * n
        self.nginx: subprocess.Popen | None = None

    def app_command(self, port: int) -> list[str]:
        run, runs_dir = self.export_config.run, str(self.export_config.runs_dir)
        return [
            *(sys.executable, "-m", "labeling_ui", "serve", "--run", run, "--runs_dir", runs_dir),
            *("--db", self.db_url, "--config", self.config_path, "--host", "127.0.0.1", "--port", str(port)),
            *("--trusted_proxies", "127.0.0.1"),  # nginx, on this host, names each client
        ]

    def start_app(self, i: int) -> None:
        log = self.folder / f"app-{i}.log"
        with open(log, "ab") as out:
            self.apps[i] = app = subprocess.Popen(self.app_command(self.ports[i]), cwd=REPO, stdout=out, stderr=out)
        wait_listening(self.ports[i], app, log)

    def start(self, nginx: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # nginx's worker (user nobody when started as root) creates its temp folders here
        for i in range(len(self.ports)):
            self.start_app(i)
        conf = self.folder / "nginx.conf"
        conf.write_text(nginx_config(self.folder, self.host, self.port, self.ports))
        test = subprocess.run([nginx, "-t", "-q", "-p", str(self.folder), "-c", str(conf)], capture_output=True)
        if test.returncode != 0:
            raise ValueError(f"nginx refused {conf}: {test.stderr.decode(errors='replace').strip()}")
        with open(self.folder / "nginx.log", "ab") as out:
            self.nginx = subprocess.Popen([nginx, "-p", str(self.folder), "-c", str(conf)], stdout=out, stderr=out)
        wait_listening(self.port, self.nginx, self.folder / "error.log")

    def watch(self) -> None:
        """Until Ctrl+C (or SIGTERM): an app process that exits is started again; nginx exiting ends it all."""
        if self.nginx is None:
            raise RuntimeError("Workers.watch() needs the processes started (Workers.start()).")
        while True:
            if self.nginx.poll() is not None:
                raise RuntimeError(f"nginx exited with code {self.nginx.returncode}: see {self.folder / 'error.log'}")
            for i, app in enumerate(self.apps):
                if app is not None and app.poll() is not None:
                    print(
                        f"App process {i + 1} (port {self.ports[i]}) exited with code {app.returncode}; "
                        "starting it again.",
                        flush=True,
                    )
                    self.start_app(i)
            time.sleep(0.5)

    def stop(self) -> None:
        for process in [self.nginx, *self.apps]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [self.nginx, *self.apps]:
            if process is not None:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


def serve_workers(
    config: LabelingConfig, config_path: str, db_url: str, export_config: ExportConfig, host: str, port: int, n: int
) -> None:
    """Serve the app from ``n`` processes behind nginx on ``host:port`` until stopped."""
    check_workers(n, db_url)
    nginx = find_nginx()
    check_free(host, port)
    store = open_store(db_url, config)  # creates or migrates the database once, before the processes
    try:
        admin_password = ensure_admin(store)
    finally:
        store.close()
    if admin_password is not None:
        print(f"First run: created the admin user. Log in as 'admin' with password: {admin_password}")
        print(f"  (shown only now; add labelers with `{users_command(export_config, db_url)} add NAME`)", flush=True)
    workers = Workers(config_path, db_url, export_config, host, port, n)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a plain stop ends the processes too (finally below)
    try:
        workers.start(nginx)
        print(
            f"Labeling app for run '{export_config.run}' running at http://{host}:{port} ({n} app processes behind "
            f"nginx; logs in {workers.folder}). Ctrl+C stops it.",
            flush=True,
        )
        workers.watch()
    except KeyboardInterrupt:
        pass
    finally:
        workers.stop()
