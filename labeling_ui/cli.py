"""The labeling stage's command line: ``python -m labeling_ui COMMAND`` (``--help`` on any command).

    users add NAME [--role labeler|admin] [--password P]   (no --password: one is generated and printed once)
    users list | users disable NAME
    import-candidates [--file PATH] [--rubric-gold-share F]
    export [--aggregation all|majority|drop_contested] [--include-gold]

Every command takes --run (default "default"), --runs_dir (default "runs") and --db URL (default: the run's SQLite
file, runs/<run>/labeling/labels.db). Other modules add commands through one function each: labeling_ui.app's
``add_serve_command(subparsers)`` and labeling_ui.simulate's ``add_simulate_command(subparsers)``, used when they
exist; they call ``add_common_arguments`` on their parser and ``open_store(args)`` in their handler.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from labeling_ui.assignment import stable_hash
from labeling_ui.db import default_db_url
from labeling_ui.store import LabelStore, user_message
from labeling_ui.users import generate_password
from pipeline.lib import runs

MIN_PASSWORD = 8
# (module, function adding its subcommand): commands owned by other modules of the package.
COMMAND_HOOKS = (("labeling_ui.app", "add_serve_command"), ("labeling_ui.simulate", "add_simulate_command"))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=runs.DEFAULT_RUN, help="Run name (default: %(default)s).")
    parser.add_argument("--runs_dir", default="runs", help="Folder of the runs (default: %(default)s).")
    parser.add_argument(
        "--db", default=None, help="Database URL, sqlite:///PATH or postgresql://... (default: the run's SQLite file)."
    )


def db_url(args: argparse.Namespace) -> str:
    return args.db or default_db_url(args.run, args.runs_dir)


def open_store(args: argparse.Namespace, **kwargs) -> LabelStore:
    return LabelStore(db_url(args), **kwargs)


# --- users ------------------------------------------------------------------------------------------------------


def users_add(args: argparse.Namespace) -> None:
    if args.password is not None and len(args.password) < MIN_PASSWORD:
        raise ValueError(f"Choose a password of at least {MIN_PASSWORD} characters, or leave --password out.")
    password = args.password or generate_password()
    store = open_store(args)
    try:
        store.add_user(args.name, password, role=args.role, simulated=args.simulated)
    finally:
        store.close()
    print(f"Added {args.role} {args.name!r}.")
    if args.password is None:
        print(f"Password (shown only now; pass it on privately): {password}")


def users_list(args: argparse.Namespace) -> None:
    store = open_store(args)
    try:
        users = store.list_users()
    finally:
        store.close()
    if not users:
        print("No users yet: add one with `python -m labeling_ui users add NAME`.")
        return
    header = f"{'username':<24} {'role':<8} {'active':<7} {'simulated':<10} {'rankings':>8}  created"
    print(header)
    for u in users:
        print(
            f"{u['username']:<24} {u['role']:<8} {str(u['active']):<7} {str(u['simulated']):<10} "
            f"{u['n_rankings']:>8}  {u['created_at']}"
        )


def users_disable(args: argparse.Namespace) -> None:
    store = open_store(args)
    try:
        store.disable_user(args.name)
    finally:
        store.close()
    print(f"Disabled {args.name!r}: they can no longer log in; their rankings stay.")


# --- items and export -------------------------------------------------------------------------------------------


def split_gold_by_rubric(rows: list[dict], share: float) -> tuple[list[dict], list[dict]]:
    """(regular rows, gold rows): a ``share`` of the prompts, picked by a hash of the prompt id, become gold items
    ranked by the demo data's gold rubric (``pipeline.demo.data.house_style_score``).

    The pick depends only on the prompt id, so re-importing a grown file keeps every earlier decision.
    """
    from labeling_ui.agreement import ranks_from_scores
    from pipeline.demo.data import house_style_score

    regular, gold = [], []
    for row in rows:
        if stable_hash("rubric-gold", row["prompt_id"]) / 2**64 < share:
            prompt = user_message(row["prompt"])
            scores = [house_style_score(prompt, text) for text in row["candidates"]]
            gold.append({**row, "gold_ranking": ranks_from_scores(scores)})
        else:
            regular.append(row)
    return regular, gold


def import_candidates(args: argparse.Namespace) -> None:
    from pipeline.lib.tables import read_table

    if not 0 <= args.rubric_gold_share < 1:
        raise ValueError(f"--rubric-gold-share must be in [0, 1), got {args.rubric_gold_share}.")
    path = runs.stage_output(args.run, "candidates", args.runs_dir, args.file)
    rows = read_table(path)
    regular, gold = split_gold_by_rubric(rows, args.rubric_gold_share) if args.rubric_gold_share else (rows, [])
    store = open_store(args)
    try:
        added, added_gold = store.import_candidates(regular), store.add_gold_items(gold)
    finally:
        store.close()
    print(
        f"Imported {path}: {added} new items and {added_gold} new gold items "
        f"({len(rows) - added - added_gold} already there) -> {db_url(args)}"
    )


def export(args: argparse.Namespace) -> None:
    from labeling_ui.export import ExportConfig, main

    main(
        ExportConfig(
            run=args.run,
            runs_dir=args.runs_dir,
            db=args.db,
            aggregation=args.aggregation,
            include_gold=args.include_gold,
        )
    )


# --- the parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labeling_ui", description="The labeling stage: users, items, export of the preferences."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    users = commands.add_parser("users", help="Add, list or disable labelers and admins.")
    users_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = users_commands.add_parser("add", help="Add a user.")
    add.add_argument("name")
    add.add_argument("--role", choices=("labeler", "admin"), default="labeler")
    add.add_argument("--password", help="Default: a generated password, printed once.")
    add.add_argument("--simulated", action="store_true", help="A simulated labeler (a program, not a person).")
    add.set_defaults(func=users_add)
    listing = users_commands.add_parser("list", help="List the users with their number of rankings.")
    listing.set_defaults(func=users_list)
    disable = users_commands.add_parser("disable", help="Stop a user from logging in; their rankings stay.")
    disable.add_argument("name")
    disable.set_defaults(func=users_disable)
    for sub in (add, listing, disable):
        add_common_arguments(sub)

    imports = commands.add_parser("import-candidates", help="Add the run's candidates as items to label.")
    add_common_arguments(imports)
    imports.add_argument("--file", help="Default: runs/<run>/candidates/candidates.jsonl.")
    imports.add_argument(
        "--rubric-gold-share",
        type=float,
        default=0.0,
        help="Demo data only: this share of the prompts become gold items ranked by the demo's gold rubric "
        "(keep it the same across imports). Default: %(default)s.",
    )
    imports.set_defaults(func=import_candidates)

    exporting = commands.add_parser("export", help="Write runs/<run>/export/ (preferences, rankings, summary).")
    add_common_arguments(exporting)
    exporting.add_argument("--aggregation", choices=("all", "majority", "drop_contested"), default="all")
    exporting.add_argument("--include-gold", action="store_true", help="Also export the gold items.")
    exporting.set_defaults(func=export)

    for module_name, function in COMMAND_HOOKS:
        if importlib.util.find_spec(module_name) is not None:
            hook = getattr(importlib.import_module(module_name), function, None)
            if hook is not None:
                hook(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:  # the user's mistake: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
