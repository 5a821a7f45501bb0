"""``python -m labeling_ui serve``: open the store, make sure an admin exists, and serve the page behind the login.

Gradio is imported only when ``serve`` runs, so the CLI's other commands start without it (and nothing in the
package imports torch). In front of Gradio's routes sits ``Guard``, plain ASGI without a web framework: it answers
``POST /login`` itself (``LoginGate``: a throttle on failures, the password check off the event loop, a signed
session cookie that outlives a restart, see ``Sessions``), refuses file uploads, and adds the security headers.
Running the app for labelers: see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from labeling_ui.config import LabelingConfig
from labeling_ui.db import default_db_path, shown_url, sqlite_file
from labeling_ui.export import ExportConfig
from labeling_ui.service import DATABASE_DOWN, LabelingService
from labeling_ui.storage import LabelStore
from labeling_ui.users import (
    SESSION_SECONDS,
    LoginThrottle,
    ReadEvery,
    generate_password,
    load_secret,
    session_token,
    session_user,
    throttle_message,
)
from pipeline.lib import runs

ADMIN = "admin"  # the admin created on the first run, when the database has none
CONCURRENCY = 32  # events handled at once: 16-64 concurrent clients are served without queueing for long
# Password checks at once. One scrypt check is ~50 ms of a core and 16 MiB: 32 of them at once on 2 cores made the
# labelers' submits 44x slower (0.056 s -> 2.45 s). With half the cores, the other half keeps serving labelers.
LOGIN_SLOTS = max(1, (os.cpu_count() or 2) // 2)
# ... and the checks run at nice 10: on a busy machine a thread at nice 0 gets ~10x their share of a core, so a flood
# costs the labelers ~10% of a core at most; a login then takes ~0.5 s instead of 0.05 s while every core is busy.
LOGIN_NICE = 10
KEY_SECONDS = 5.0  # a user's session key is looked up again after this: disabling ends sessions within 5 s
MAX_LOGIN_FORM = 4096  # bytes: a user name (64 characters at most) and a password
SECRET_FILE = "session_secret"  # in runs/<run>/labeling/, next to the run's database
UPLOADS = "/gradio_api/upload"  # also /gradio_api/upload_progress: the page has no file input
NO_UPLOADS = "This app takes no files: rankings, flags and comments are sent as text."
# The page's fonts: installed fonts only (the default theme fetches Google fonts, which offline machines cannot reach).
# First the fonts `make setup` installs (Debian's fonts-liberation and fonts-dejavu-core), so the page is laid out
# alike on every machine set up that way, the browser tests included; then the system's own, for other systems.
# Gradio writes the names as given: a family name with a space is quoted here, a generic family is not.
PAGE_FONT = ["'Liberation Sans'", "'DejaVu Sans'", "system-ui", "sans-serif"]
PAGE_FONT_MONO = ["'Liberation Mono'", "'DejaVu Sans Mono'", "ui-monospace", "monospace"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The strictest policy Gradio's page works under (checked in a real Chromium by tests/test_labeling_security.py):
# everything from this server only; scripts also need this response's nonce (the page's inline ones carry it) or
# 'unsafe-eval', because Gradio runs the page's js_on_load (static/page.js) through `new Function`; inline styles,
# which Gradio's components set; data: images, Gradio's icons (radio buttons, the footer).
CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff")]
SCRIPT_TAG = re.compile(rb"<script(?=[\s>])")
# Gradio's login page says nothing when a login is refused with 429 (throttled): show the server's message, which
# says when to try again, under the Login button. Gradio shows its "Incorrect Credentials" (p.creds) for any refusal:
# hidden while the throttle's message stands, so the labeler reads one reason, the right one.
LOGIN_REFUSED_JS = b"""(() => {
  const style = document.createElement('style');
  style.textContent = 'html.login-throttled p.creds { display: none; }';
  document.head.append(style);
  const fetchPage = window.fetch.bind(window);
  window.fetch = async (resource, options) => {
    const response = await fetchPage(resource, options);
    const url = new URL(resource instanceof Request ? resource.url : String(resource), location.href);
    if (options?.method === 'POST' && url.pathname.replace(/\\/$/, '').endsWith('/login')) {
      let note = document.getElementById('login-refused');
      document.documentElement.classList.toggle('login-throttled', response.status === 429);
      if (response.status === 429) {
        const { detail } = await response.clone().json();
        if (!note) {
          note = document.createElement('p');
          note.id = 'login-refused';
          note.setAttribute('role', 'alert');
          note.style.color = 'var(--error-text-color, #b91c1c)';
          const login = [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Login');
          (login?.parentElement ?? document.body).append(note);
        }
        note.textContent = detail;
      } else if (note) note.remove();
    }
    return response;
  };
})();"""


def open_store(db_url: str, config: LabelingConfig) -> LabelStore:
    """The store, its schema brought up to date; a database that does not answer is named, with what to do."""
    try:
        return LabelStore(db_url, config)
    except DATABASE_DOWN as error:
        reason = " ".join(str(error.orig or error).split())[:300]
        raise ValueError(
            f"Cannot reach the labels' database at {shown_url(db_url)}: {reason}. Start it (or correct --db) and "
            "run this again."
        ) from error


def ensure_admin(store: LabelStore) -> str | None:
    """Create the user 'admin' with a generated password when the database has no admin; return that password."""
    if any(u["role"] == "admin" for u in store.list_users()):
        return None
    password = generate_password()
    try:
        store.add_user(ADMIN, password, role="admin")
    except ValueError as error:
        raise ValueError(
            f"The database has no admin and the name {ADMIN!r} is taken: add one with "
            "`python -m labeling_ui users add NAME --role admin`."
        ) from error
    return password


def users_command(export_config: ExportConfig, db_url: str) -> str:
    """The ``users`` command that changes the database this app serves (the run's, or the one --db named)."""
    where = f"--run {export_config.run}"
    if str(export_config.runs_dir) != "runs":
        where += f" --runs_dir {export_config.runs_dir}"
    if sqlite_file(db_url) != default_db_path(export_config.run, export_config.runs_dir):
        where += f" --db {shown_url(db_url)}"
    return f"python -m labeling_ui users {where}"


# --- sessions and logins ------------------------------------------------------------------------------------------


class Sessions:
    """Gradio's ``app.tokens`` (session cookie value -> user name), as signed tokens instead of a dict in memory.

    Nothing about a session is kept in the server, so sessions survive a restart: a token is valid while it is
    younger than ``SESSION_SECONDS``, signed with the run's secret, and its user is active with the password it was
    issued under (``LabelStore.session_key``, looked up at most every ``KEY_SECONDS`` per user). Logging out deletes
    the browser's cookie; a copy of the token stays valid until it expires or the password is reset.
    """

    def __init__(self, secret: bytes, session_key: Callable[[str], str | None]):
        self.secret, self.session_key = secret, session_key
        # Gradio names its cookies after the app's cookie_id, random per start; derived from the secret, the names
        # stay the same across restarts (and differ between runs served on one host).
        self.cookie_id = hmac.new(secret, b"cookie id", hashlib.sha256).hexdigest()[:24]
        self._key = ReadEvery(session_key, KEY_SECONDS, DATABASE_DOWN)

    def issue(self, username: str) -> str:
        self._key.forget(username)  # a login right after a password reset must see the new key
        return session_token(self.secret, username, self._key(username) or "", time.time())

    def cookies(self, token: str) -> list[tuple[bytes, bytes]]:
        """Set-Cookie headers under Gradio's two names (the Secure one for HTTPS, the other for plain HTTP).
        SameSite=Lax: another site's page cannot make the browser send them with its requests to this app."""
        attributes = f"HttpOnly; Path=/; Max-Age={SESSION_SECONDS}; SameSite=Lax"
        return [
            (b"set-cookie", f"access-token-{self.cookie_id}={token}; {attributes}; Secure".encode()),
            (b"set-cookie", f"access-token-unsecure-{self.cookie_id}={token}; {attributes}".encode()),
        ]

    def get(self, token: str | None, default: str | None = None) -> str | None:
        if not token:
            return default
        return session_user(self.secret, token, self._key, time.time()) or default

    def __getitem__(self, token: str) -> str:
        username = self.get(token)
        if username is None:
            raise KeyError(token)
        return username

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self.get(token) is not None

    def __delitem__(self, token: str) -> None:
        """Gradio's logout deletes the session: here there is nothing to delete but the cookie, which it clears."""

    def keys(self) -> tuple[str, ...]:
        """Gradio's logout looks for the user's other sessions: none are kept."""
        return ()


def _lower_priority() -> None:
    """Start of a password-check thread: nice ``LOGIN_NICE``, this thread only (Linux keeps a nice value per thread)."""
    # Elsewhere (no per-thread nice value, or no setpriority) the checks run at normal priority, bounded by
    # LOGIN_SLOTS all the same.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOGIN_NICE)
    except (AttributeError, OSError):
        pass


@dataclass(frozen=True)
class LoginAnswer:
    status: int  # 200 logged in, 400 wrong name or password, 429 throttled
    message: str = ""
    retry_after: float = 0.0


class LoginGate:
    """Who may log in: the throttle first, then the password check in a worker thread, ``LOGIN_SLOTS`` at once.

    A flood of bad logins queues for the slots instead of taking every core. Runs on the event loop only (the
    throttle is not thread-safe); the semaphore binds to the loop at first use.
    """

    def __init__(self, authenticate: Callable[[str, str], bool]):
        self.authenticate = authenticate
        self.throttle = LoginThrottle()
        self.slots = asyncio.Semaphore(LOGIN_SLOTS)
        self.workers = ThreadPoolExecutor(
            LOGIN_SLOTS, thread_name_prefix="password-check", initializer=_lower_priority
        )

    def _throttled(self, username: str, address: str) -> LoginAnswer | None:
        wait, what = self.throttle.retry_after(username, address, time.monotonic())
        return LoginAnswer(429, throttle_message(wait, what), wait) if wait else None

    async def attempt(self, username: str, password: str, address: str) -> LoginAnswer:
        if refused := self._throttled(username, address):
            return refused
        async with self.slots:
            # Again: while this attempt waited for a slot, the ones before it may have used up the free failures.
            if refused := self._throttled(username, address):
                return refused
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(self.workers, self.authenticate, username, password):
                self.throttle.succeeded(username)
                return LoginAnswer(200)
            self.throttle.failed(username, address, time.monotonic())
        return LoginAnswer(400, "Incorrect credentials.")


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """A login form's fields: multipart (Gradio's login page sends FormData) or urlencoded (gradio_client, curl)."""
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
        if not message.is_multipart():
            return {}
        return {
            str(part.get_param("name", header="content-disposition")): _text(part) for part in message.iter_parts()
        }
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}


def _text(part: email.message.Message) -> str:
    """A form field's value (a part that is not itself multipart: its payload is bytes, or None when empty)."""
    payload = part.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else ""


# --- the ASGI layer in front of Gradio ----------------------------------------------------------------------------


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request's body; None when it is longer than ``limit`` or the client went away."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return body


async def _respond(send: Send, status: int, content: dict, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(content).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware in front of Gradio's routes: the login, no uploads, and the security headers on every answer.

    Each page gets a fresh nonce: its own ``<script>`` tags carry it and the Content-Security-Policy allows only
    them, so a script injected into the page some other way does not run.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], gate: LoginGate, sessions: Sessions):
        self.app, self.gate, self.sessions = app, gate, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16).encode()
        send = self._secured(send, nonce)
        if scope["path"].rstrip("/") == "/login" and scope["method"] == "POST":
            await self._login(scope, receive, send)
        elif scope["path"].startswith(UPLOADS):
            await _respond(send, 403, {"detail": NO_UPLOADS})
        else:
            await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, MAX_LOGIN_FORM)
        if body is None:
            await _respond(send, 413, {"detail": f"A login form is at most {MAX_LOGIN_FORM} bytes."})
            return
        headers = dict(scope["headers"])
        try:
            form = form_fields(headers.get(b"content-type", b"").decode("latin-1"), body)
        except (ValueError, LookupError):  # undecodable bytes, a broken multipart body
            form = {}
        username, password = form.get("username", "").strip(), form.get("password", "")
        address = (scope.get("client") or ("unknown", 0))[0]
        answer = await self.gate.attempt(username, password, address)
        if answer.status == 200:
            await _respond(send, 200, {"success": True}, self.sessions.cookies(self.sessions.issue(username)))
        elif answer.status == 429:
            retry = [(b"retry-after", str(max(1, round(answer.retry_after))).encode())]
            await _respond(send, 429, {"detail": answer.message}, retry)
        else:
            await _respond(send, answer.status, {"detail": answer.message})

    def _secured(self, send: Send, nonce: bytes) -> Send:
        """``send`` with the security headers added, and the nonce put into an HTML page's script tags."""
        page: dict[str, Any] = {}  # an HTML response's start and body so far: rewritten once complete

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *SECURITY_HEADERS]
                headers.append((b"content-security-policy", CSP.format(nonce=nonce.decode()).encode()))
                message = {**message, "headers": headers}
                fields = dict(headers)
                if fields.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in fields:
                    page.update(start=message, body=b"")
                    return
            elif message["type"] == "http.response.body" and page:
                page["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                html = SCRIPT_TAG.sub(b'<script nonce="' + nonce + b'"', page["body"])
                html = html.replace(
                    b"</head>", b'<script nonce="' + nonce + b'">' + LOGIN_REFUSED_JS + b"</script></head>", 1
                )
                headers = [(k, v) for k, v in page["start"]["headers"] if k.lower() != b"content-length"]
                await send({**page["start"], "headers": [*headers, (b"content-length", str(len(html)).encode())]})
                message = {"type": "http.response.body", "body": html}
            await send(message)

        return secured


def _answered_by_the_guard(username: str, password: str) -> bool:
    """Gradio's own POST /login never runs: ``Guard`` answers it. Passing ``auth`` still turns on Gradio's login
    page and its session check on every route (through ``Sessions``)."""
    return False


# --- serve --------------------------------------------------------------------------------------------------------


def serve(config: LabelingConfig, db_url: str, export_config: ExportConfig, host: str, port: int) -> None:
    """Serve the app on ``host:port`` against ``db_url`` and block until it is stopped.

    ``export_config`` is the run the admin tab's export writes (and names the run in what is printed); the session
    secret lives in that run's labeling folder.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Gradio rebuilds a pandas summary of its last 10,000 events after every event, for a monitoring page this app
    # turns off: at a few events per submit that was a sixth of the server's CPU. Keep it from running.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    # Uvicorn believes X-Forwarded-For from the addresses in FORWARDED_ALLOW_IPS (its default: loopback, so any local
    # client could pick the address the login throttle counts). Only the configured proxies may; none by default.
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(config.trusted_proxies)
    # Gradio (and the page built on it) load here, not at the top: the CLI's other commands never need them.
    import gradio as gr

    from labeling_ui.page import CSS, build_page

    with contextlib.suppress(ImportError):
        # Gradio sets matplotlib's backend around every event, and imports it for the first: 0.3 s that the first
        # labeler would wait for, now spent here.
        import matplotlib.pyplot  # noqa: F401

    store = open_store(db_url, config)
    try:
        admin_password = ensure_admin(store)
        if admin_password is not None:  # printed at once: a failed start below must not lose it
            print(f"First run: created the admin user. Log in as '{ADMIN}' with password: {admin_password}")
            print(
                f"  (shown only now; add labelers with `{users_command(export_config, db_url)} add NAME`)", flush=True
            )
        service = LabelingService(store, config, export_config)
        blocks = build_page(service)
        secret_file = runs.stage_dir(export_config.run, "labeling", export_config.runs_dir) / SECRET_FILE
        sessions = Sessions(load_secret(secret_file), store.session_key)
        # Gradio's app is made here and handed to launch(_app=...), as gr.Server hands over its own, so that the
        # guard is in it before it serves. _app is a private parameter of launch(): re-check it on a Gradio upgrade.
        app = gr.routes.App(default_response_class=gr.routes.ORJSONResponse)
        app.cookie_id = sessions.cookie_id
        app.add_middleware(Guard, gate=LoginGate(service.authenticate), sessions=sessions)

        blocks.queue(default_concurrency_limit=CONCURRENCY)
        theme = gr.themes.Default(font=PAGE_FONT, font_mono=PAGE_FONT_MONO)
        try:
            _, local_url, _ = blocks.launch(
                server_name=host,
                server_port=port,
                auth=_answered_by_the_guard,
                auth_message="Log in with the name and password you were given.",
                share=False,
                run_history=False,
                quiet=True,
                prevent_thread_lock=True,
                max_threads=2 * CONCURRENCY,
                ssr_mode=False,
                pwa=False,
                mcp_server=False,
                enable_monitoring=False,
                theme=theme,
                css=CSS.read_text(),
                _app=app,
            )
        except OSError as error:
            raise ValueError(
                f"Cannot listen on {host}:{port}: {error} Pick another port with --port N "
                '(make label ARGS="--port N").'
            ) from error
        # launch() reset it to an empty dict: until this line, nobody was logged in. Sessions answers the dict calls
        # Gradio makes on it (get, in, del, keys).
        app.tokens = sessions  # type: ignore[assignment]
        print(
            f"Labeling app for run '{export_config.run}' running at {local_url} (labels: {shown_url(db_url)}). "
            "Ctrl+C stops it.",
            flush=True,
        )
        blocks.block_thread()
    finally:
        store.close()
