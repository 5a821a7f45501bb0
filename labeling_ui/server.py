"""``python -m labeling_ui serve``: open the store, make sure an admin exists, and serve the page behind the login.

Gradio is imported only when ``serve`` runs, so the CLI's other commands start without it (and nothing in the
package imports torch). Running the app for labelers: see the README.
"""

from __future__ import annotations

import os

import anyio.to_thread

from labeling_ui.config import LabelingConfig
from labeling_ui.db import shown_url
from labeling_ui.export import ExportConfig
from labeling_ui.service import LabelingService
from labeling_ui.storage import LabelStore
from labeling_ui.users import generate_password

ADMIN = "admin"  # the admin created on the first run, when the database has none
CONCURRENCY = 32  # events handled at once: 16-64 concurrent clients are served without queueing for long


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


def serve(config: LabelingConfig, db_url: str, export_config: ExportConfig, host: str, port: int) -> None:
    """Serve the app on ``host:port`` against ``db_url`` and block until it is stopped.

    ``export_config`` is the run the admin tab's export writes (and names the run in what is printed).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Gradio rebuilds a pandas summary of its last 10,000 events after every event, for a monitoring page this app
    # turns off: at a few events per submit that was a sixth of the server's CPU. Keep it from running.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    # Gradio (and the page built on it) load here, not at the top: the CLI's other commands never need them.
    import gradio as gr

    from labeling_ui.page import CSS, build_page

    store = LabelStore.for_config(db_url, config)
    try:
        admin_password = ensure_admin(store)
        if admin_password is not None:  # printed at once: a failed start below must not lose it
            print(f"First run: created the admin user. Log in as '{ADMIN}' with password: {admin_password}")
            print("  (shown only now; add labelers with `python -m labeling_ui users add NAME`)", flush=True)
        service = LabelingService(store, config, export_config)
        blocks = build_page(service)

        async def auth(username: str, password: str) -> bool:
            # scrypt takes ~50 ms: hash in a worker thread so logins do not stall the server's event loop.
            return await anyio.to_thread.run_sync(service.authenticate, username, password)

        blocks.queue(default_concurrency_limit=CONCURRENCY)
        # Fonts from the system: the default theme fetches Google fonts, which offline machines cannot reach.
        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        try:
            _, local_url, _ = blocks.launch(
                server_name=host,
                server_port=port,
                auth=auth,
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
            )
        except OSError as error:
            raise ValueError(
                f"Cannot listen on {host}:{port}: {error} Pick another port with --port N "
                '(make label ARGS="--port N").'
            ) from error
        print(
            f"Labeling app for run '{export_config.run}' running at {local_url} (labels: {shown_url(db_url)}). "
            "Ctrl+C stops it.",
            flush=True,
        )
        blocks.block_thread()
    finally:
        store.close()
