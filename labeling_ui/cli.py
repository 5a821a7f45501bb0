"""The labeling stage's command line: ``python -m labeling_ui COMMAND`` (``--help`` on any command).

    serve [--config C] [--host H] [--port N] [--workers N] [--trusted_proxies A,B]
    simulate [--config C] [--rubric module:function] [--labelers N] [--noise S,S] [--url URL] [--limit N]
    import-candidates [--file PATH] [--config FILE] [--rubric-gold-share F --rubric module:function]
    export [--aggregation all|majority|drop_contested] [--include-gold]
    users add NAME [--role labeler|admin] [--password P]   (no --password: one is generated and printed once)
    users list | users disable NAME | users enable NAME | users reset-password NAME   (a new password, printed once)

Every command takes --run (default "default"), --runs_dir (default "runs") and --db URL (default: the run's SQLite
file, runs/<run>/labeling/labels.db), so ``users`` changes the database that ``serve`` with the same --run serves
(``users --run R add NAME`` or ``users add NAME --run R``). ``COMMANDS`` maps each command to its handler;
``build_parser`` gives each its arguments. Gradio loads only inside ``serve`` (see labeling_ui.server).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from labeling_ui import server, simulate, workers
from labeling_ui.assignment import split_gold_by_rubric
from labeling_ui.config import DEFAULT_CONFIG, load_config
from labeling_ui.db import default_db_url, shown_url, sqlite_file
from labeling_ui.export import AGGREGATIONS, ExportConfig
from labeling_ui.export import main as export_stage
from labeling_ui.storage import LabelStore
from labeling_ui.users import generate_password
from pipeline.lib import runs
from pipeline.lib.rubric import load_rubric
from pipeline.lib.tables import read_table

MIN_PASSWORD = 8


def db_url(args: argparse.Namespace) -> str:
    return args.db or default_db_url(args.run, args.runs_dir)


# --- the app and the simulated labelers ---------------------------------------------------------------------------


def serve_command(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    if args.trusted_proxies is not None:
        proxies = [p.strip() for p in args.trusted_proxies.split(",") if p.strip()]
        config = dataclasses.replace(config, trusted_proxies=proxies)  # checked as the file's are
    url = db_url(args)
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    export_config = ExportConfig(run=args.run, runs_dir=args.runs_dir, db=url)
    if args.workers == 1:
        server.serve(config, url, export_config, host, port)
    else:
        workers.serve_workers(config, args.config, url, export_config, host, port, args.workers)


def simulate_command(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {}
    if args.noise:
        overrides["noise"] = [float(x) for x in args.noise.split(",")]
    if args.rubric:
        overrides["rubric"] = args.rubric
    config = dataclasses.replace(load_config(args.config), **overrides)  # the overrides pass the file's checks
    simulate.rubric_of(config)  # refused before the database is opened (and created)
    store = LabelStore(db_url(args), config)
    try:
        passwords_file = runs.stage_dir(args.run, "labeling", args.runs_dir) / "simulated_users.json"
        summary = simulate.simulate(
            store, config, passwords_file, args.labelers, args.url, args.limit, args.until_rankings
        )
    finally:
        store.close()
    simulate.report(summary)


# --- items and export ---------------------------------------------------------------------------------------------


def import_candidates_command(args: argparse.Namespace) -> None:
    share = args.rubric_gold_share
    if not 0 <= share < 1:
        raise ValueError(f"--rubric-gold-share must be in [0, 1), got {share}.")
    rubric = load_rubric(args.rubric)
    if share and rubric is None:
        raise ValueError(
            f"--rubric-gold-share {share} needs --rubric module:function, the gold rubric that ranks the gold items "
            "(a function(prompt, response) -> float, higher is better)."
        )
    path = runs.stage_output(args.run, "candidates", args.runs_dir, args.file)
    rows = read_table(path)
    regular, gold = split_gold_by_rubric(rows, share, rubric) if share and rubric is not None else (rows, [])
    store = LabelStore(db_url(args), load_config(args.config))  # its max_candidates, as the app serves
    try:
        added, added_gold = store.import_candidates(regular), store.add_gold_items(gold)
    finally:
        store.close()
    print(
        f"Imported {path}: {added} new items and {added_gold} new gold items "
        f"({len(rows) - added - added_gold} already there) -> {db_url(args)}"
    )


def export_command(args: argparse.Namespace) -> None:
    config = ExportConfig(
        run=args.run, runs_dir=args.runs_dir, db=args.db, aggregation=args.aggregation, include_gold=args.include_gold
    )
    export_stage(config)


# --- users --------------------------------------------------------------------------------------------------------


@contextmanager
def users_store(args: argparse.Namespace) -> Iterator[tuple[LabelStore, str]]:
    """The store of the database that ``serve`` with the same --run (or --db) serves, and how to name it.

    Only ``add`` may create a database: a command on a run without one is most likely a mistyped --run.
    """
    url = db_url(args)
    shown = shown_url(url) if args.db else f"{shown_url(url)} (run {args.run!r})"
    path = sqlite_file(url)
    if path is not None and not path.exists() and args.action != "add":
        raise ValueError(
            f"There is no labeling database at {path}. Pass the --run the app serves (`make label RUN=NAME` serves "
            "runs/NAME/labeling/labels.db), or --db URL."
        )
    store = LabelStore(url)
    try:
        yield store, shown
    except ValueError as error:
        if str(error).startswith("No user"):  # the store's message, with where it looked and what to do
            raise ValueError(
                f"No user {args.name!r} in {shown}. `users list` shows who is there; is --run the run the app serves?"
            ) from error
        raise
    finally:
        store.close()


def users_add(args: argparse.Namespace) -> None:
    if args.password is not None and len(args.password) < MIN_PASSWORD:
        raise ValueError(f"Choose a password of at least {MIN_PASSWORD} characters, or leave --password out.")
    password = args.password or generate_password()
    path = sqlite_file(db_url(args))
    new = path is not None and not path.exists()
    with users_store(args) as (store, shown):
        store.add_user(args.name, password, role=args.role, simulated=args.simulated)
    print(f"Added {args.role} {args.name!r} to {shown}.")
    if args.password is None:
        print(f"Password (shown only now; pass it on privately): {password}")
    if new:
        print(
            f"Note: this database was created just now and has no items yet. The app that serves it is "
            f"`python -m labeling_ui serve --run {args.run}` (make label RUN={args.run}); if the app runs another "
            "run, add the user there with --run."
        )


def users_list(args: argparse.Namespace) -> None:
    with users_store(args) as (store, shown):
        users = store.list_users()
    if not users:
        print(f"No users in {shown} yet: add one with `python -m labeling_ui users add NAME`.")
        return
    print(f"Users of {shown}:")
    header = f"{'username':<24} {'role':<8} {'active':<7} {'simulated':<10} {'rankings':>8}  created"
    print(header)
    for u in users:
        print(
            f"{u['username']:<24} {u['role']:<8} {str(u['active']):<7} {str(u['simulated']):<10} "
            f"{u['n_rankings']:>8}  {u['created_at']}"
        )


def users_disable(args: argparse.Namespace) -> None:
    with users_store(args) as (store, shown):
        store.set_active(args.name, False)
    print(
        f"Disabled {args.name!r} in {shown}: they can no longer log in (a running app ends their session within "
        "seconds); their rankings stay. `users enable` undoes it."
    )


def users_enable(args: argparse.Namespace) -> None:
    with users_store(args) as (store, shown):
        store.set_active(args.name, True)
    print(f"Enabled {args.name!r} in {shown}: they can log in again with their password.")


def users_reset_password(args: argparse.Namespace) -> None:
    password = generate_password()
    with users_store(args) as (store, shown):
        store.reset_password(args.name, password)
    print(f"Reset the password of {args.name!r} in {shown}: the old one no longer works, and their sessions end.")
    print(f"New password (shown only now; pass it on privately): {password}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "serve": serve_command,
    "simulate": simulate_command,
    "import-candidates": import_candidates_command,
    "export": export_command,
    "users add": users_add,
    "users list": users_list,
    "users disable": users_disable,
    "users enable": users_enable,
    "users reset-password": users_reset_password,
}


# --- the parser ---------------------------------------------------------------------------------------------------


def common_arguments(defaults: bool) -> argparse.ArgumentParser:
    """--run, --runs_dir and --db. Without ``defaults`` they are set only when given: ``users`` takes them before
    its action and the action after it, and the action's defaults would otherwise undo what came before."""

    def default(value: str | None) -> str | None:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run", default=default(runs.DEFAULT_RUN), help="Run name (default: default).")
    common.add_argument("--runs_dir", default=default("runs"), help="Folder of the runs (default: runs).")
    common.add_argument(
        "--db",
        default=default(None),
        help="Database URL, sqlite:///PATH or postgresql://... (default: the run's SQLite file).",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """One subparser per name in ``COMMANDS`` ("users add" is ``users`` then ``add``)."""
    common = common_arguments(defaults=True)  # the arguments every command takes
    parser = argparse.ArgumentParser(
        prog="python -m labeling_ui",
        description="The labeling stage: the app, users, items, export of the preferences.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", parents=[common], help="The ranking app for labelers and admins (prints its URL)."
    )
    serve.add_argument("--config", default=str(DEFAULT_CONFIG), help="Default: configs/labeling.yaml.")
    serve.add_argument("--host", default=None, help="Address to listen on (default: the config's, 127.0.0.1).")
    serve.add_argument("--port", type=int, default=None, help="Port (default: the config's).")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="App processes (default 1). N > 1: N processes behind nginx with sticky sessions, on PostgreSQL.",
    )
    serve.add_argument(
        "--trusted_proxies",
        default=None,
        help="Comma-separated proxy addresses or networks whose X-Forwarded-For is believed (default: the config's).",
    )

    sim = commands.add_parser(
        "simulate",
        parents=[common],
        help="Simulated labelers rank every item by a rubric (pipeline runs, tests, load tests).",
    )
    sim.add_argument("--config", default=str(DEFAULT_CONFIG), help="Default: configs/labeling.yaml.")
    sim.add_argument(
        "--rubric",
        help="module:function(prompt, response) -> float that the labelers rank by (default: the config's rubric; "
        "one of the two is required).",
    )
    sim.add_argument("--labelers", type=int, default=None, help="Default: one per noise level of the config.")
    sim.add_argument("--noise", help="Comma-separated sigmas, e.g. 0.05,0.15 (default: the config's).")
    sim.add_argument("--url", help="A running app, e.g. http://127.0.0.1:7860 (default: in this process).")
    sim.add_argument("--limit", type=int, default=None, help="At most this many rankings per labeler.")
    sim.add_argument(
        "--until-rankings",
        type=int,
        default=None,
        help="A label budget: stop once the database holds this many current rankings of regular items (the items "
        "handed out first are labeled: fewest rankings, highest priority). Default: label everything.",
    )

    imports = commands.add_parser(
        "import-candidates", parents=[common], help="Add the run's candidates as items to label."
    )
    imports.add_argument("--file", help="Default: runs/<run>/candidates/candidates.jsonl.")
    imports.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="Its max_candidates caps the replies per item. Default: %(default)s.",
    )
    imports.add_argument(
        "--rubric-gold-share",
        type=float,
        default=0.0,
        help="This share of the prompts become gold items ranked by --rubric (keep it the same across imports). "
        "Default: %(default)s.",
    )
    imports.add_argument(
        "--rubric", help="module:function(prompt, response) -> float that ranks the gold items (needed for a share)."
    )

    exporting = commands.add_parser(
        "export", parents=[common], help="Write runs/<run>/export/ (preferences, rankings, summary)."
    )
    exporting.add_argument("--aggregation", choices=AGGREGATIONS, default="all")
    exporting.add_argument("--include-gold", action="store_true", help="Also export the gold items.")

    users = commands.add_parser(
        "users",
        parents=[common],
        help="Add, list, disable or enable labelers and admins, or reset a password, in the database of --run.",
    )
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    after = common_arguments(defaults=False)  # `users --run R add NAME` and `users add NAME --run R` alike
    add = actions.add_parser("add", parents=[after], help="Add a user.")
    add.add_argument("name")
    add.add_argument("--role", choices=("labeler", "admin"), default="labeler")
    add.add_argument("--password", help="Default: a generated password, printed once.")
    add.add_argument("--simulated", action="store_true", help="A simulated labeler (a program, not a person).")
    actions.add_parser("list", parents=[after], help="List the users with their number of rankings.")
    disable = actions.add_parser("disable", parents=[after], help="Stop a user from logging in; their rankings stay.")
    disable.add_argument("name")
    enable = actions.add_parser("enable", parents=[after], help="Let a disabled user log in again.")
    enable.add_argument("name")
    reset = actions.add_parser(
        "reset-password", parents=[after], help="Give a user a new generated password (printed once)."
    )
    reset.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = f"users {args.action}" if args.command == "users" else args.command
    try:
        COMMANDS[name](args)
    except (ValueError, FileNotFoundError) as error:  # the user's mistake: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
