"""The labeling CLI and its public API: the gold rubric is always named, never a default; the shipped config is what
the app gets; other packages' API counts what the conductor counted; no command but ``serve`` loads torch or gradio;
and the package's imports form the layers its modules' docstrings describe."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
import yaml

from labeling_ui import api, cli, config, db, server
from labeling_ui.config import LabelingConfig
from labeling_ui.db import Item
from labeling_ui.rules import Submission, candidate_id
from labeling_ui.service import LabelingService
from labeling_ui.storage import LabelStore, Progress
from tests.conftest import REPO
from tests.labeling_server import HOUSE_STYLE, question_rows

CONFIG = REPO / "configs" / "labeling.yaml"
PACKAGE = REPO / "labeling_ui"


def length_score(prompt: str, response: str) -> float:
    """A rubric whose ranks are worked out at a glance: the longer response is the better one."""
    return float(len(response))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def items_in(url: str) -> dict[str, tuple[bool, dict | None]]:
    """prompt_id -> (is_gold, gold_ranking) of every stored item."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(Item.prompt_id, Item.is_gold, Item.gold_ranking)).all()
    finally:
        engine.dispose()
    return {row.prompt_id: (row.is_gold, row.gold_ranking) for row in rows}


# --- the gold rubric is configuration ----------------------------------------------------------------------------


def test_import_candidates_ranks_gold_items_by_the_rubric_it_is_given(tmp_path, capsys):
    rows = [
        {"prompt_id": f"g{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "candidates": texts}
        for i, texts in enumerate([["one", "three"], ["a", "ccc", "bb"], ["xx", "y"]])
    ]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    argv = ["import-candidates", "--run", "r", "--runs_dir", str(tmp_path), "--db", url, "--file", str(candidates)]

    assert cli.main([*argv, "--rubric-gold-share", "0.7"]) == 2  # a gold share and no rubric: refused
    assert "--rubric module:function" in capsys.readouterr().err
    assert not (tmp_path / "labels.db").exists()  # refused before anything was written

    rubric = ["--rubric", "tests.test_labeling_cli:length_score"]
    assert cli.main([*argv, "--rubric-gold-share", "0.7", *rubric]) == 0
    assert "2 new items and 1 new gold items" in capsys.readouterr().out
    # stable_hash("rubric-gold", prompt_id) / 2**64 is 0.919, 0.674 and 0.752 for g0, g1, g2: only g1 is below 0.7.
    # Its gold ranking by length: "ccc" 1, "bb" 2, "a" 3.
    stored = items_in(url)
    assert stored["g0"] == (False, None) and stored["g2"] == (False, None)
    assert stored["g1"] == (True, {candidate_id("a"): 3, candidate_id("ccc"): 1, candidate_id("bb"): 2})
    assert cli.main([*argv, "--rubric-gold-share", "0.7", *rubric]) == 0  # the same import again adds nothing
    assert "0 new items and 0 new gold items (3 already there)" in capsys.readouterr().out


def test_simulate_refuses_without_a_rubric_and_touches_no_database(tmp_path, capsys):
    argv = ["simulate", "--run", "r", "--runs_dir", str(tmp_path), "--config", str(CONFIG)]
    assert cli.main(argv) == 2
    assert "pass --rubric module:function" in capsys.readouterr().err
    assert not db.default_db_path("r", tmp_path).exists()


# --- configs/labeling.yaml is what the app gets -------------------------------------------------------------------


def test_the_shipped_labeling_yaml_is_what_serve_and_the_store_get(tmp_path, monkeypatch):
    raw = yaml.safe_load(CONFIG.read_text())
    shipped = config.load_config(CONFIG)
    for key, value in raw.items():
        assert getattr(shipped, key) == value, key
    assert "rubric" not in raw and shipped.rubric is None  # configs/pipeline.yaml names it and passes --rubric

    served = {}

    def serve(config, url, export, host, port):  # what `serve` is started with, instead of starting it
        served.update(config=config, url=url, export=export, host=host, port=port)

    monkeypatch.setattr(server, "serve", serve)
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert cli.main(["serve", "--run", "r", "--runs_dir", str(tmp_path), "--db", url]) == 0  # the default --config
    assert served["config"] == shipped and (served["host"], served["port"]) == (raw["host"], raw["port"])
    assert (served["export"].run, served["export"].db, served["url"]) == ("r", url, url)
    assert cli.main(["serve", "--run", "r", "--runs_dir", str(tmp_path), "--port", "7999"]) == 0
    assert served["port"] == 7999 and served["url"] == db.default_db_url("r", tmp_path)

    store = LabelStore(url, served["config"])
    try:
        settings = store.config
        assert (settings.overlap, settings.gold_rate, settings.seed) == (raw["overlap"], raw["gold_rate"], raw["seed"])
        store.import_candidates(question_rows(1))
        store.add_user("alice", "alice-password")
        service = LabelingService(store, served["config"])
        item = service.next_item("alice")
        ranks = {c["id"]: rank for rank, c in enumerate(item["candidates"], start=1)}
        assert service.submit("alice", Submission("s-1", item["item_id"], ranks))["ok"]
        (ranking,) = store.all_current_rankings()
        assert ranking["guidelines_version"] == raw["guidelines_version"]
    finally:
        store.close()


# --- the API other packages use -----------------------------------------------------------------------------------


def test_labeling_progress_counts_current_rankings_of_regular_items(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert api.labeling_progress(url) == Progress(items=0, rankings=0)  # a new database: migrated, empty
    store = LabelStore(url, LabelingConfig(overlap=2, gold_rate=0.0))
    try:
        store.import_candidates(question_rows(3))
        store.add_gold_items([{**row, "gold_ranking": [1, 2, 3, 4]} for row in question_rows(2, prefix="g")])
        for name in ("ana", "ben"):
            store.add_user(name, "password1")

        def rank(user: str, view, submission_id: str, reverse: bool = False, edits: int | None = None, on=store):
            ids = [cid for cid, _ in view.candidates]
            ranks = {cid: (len(ids) - r if reverse else r + 1) for r, cid in enumerate(ids)}
            assert on.submit_ranking(user, Submission(submission_id, view.item_id, ranks), edits=edits).created

        # A ranking is accepted for the item in hand only, and an edit names the version it replaces.
        first = store.next_item("ana")
        rank("ana", first, "a1")
        rank("ana", first, "a2", reverse=True, edits=1)  # an edit: a new version, one current ranking
        rank("ana", store.next_item("ana"), "a3")
        rank("ben", store.next_item("ben"), "b1")
        gold_ids = {item_id for item_id, _ in items_with_candidates(url, gold=True)}
        every_turn_gold = LabelStore(url, LabelingConfig(overlap=2, gold_rate=0.99))  # ben's next item is a gold one
        try:
            gold = every_turn_gold.next_item("ben")
            assert gold.item_id in gold_ids
            rank("ben", gold, "b2", on=every_turn_gold)  # a gold item: not counted
        finally:
            every_turn_gold.close()
        assert store.count_rankings() == 5
    finally:
        store.close()
    # 3 regular items (the 2 gold ones left out); current rankings of them: ana 2 (her edit replaced one), ben 1.
    assert api.labeling_progress(url) == Progress(items=3, rankings=3)


def items_with_candidates(url: str, gold: bool) -> list[tuple[str, list[dict]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(Item.id, Item.candidates).where(Item.is_gold == gold)).all()
    finally:
        engine.dispose()


def test_the_api_is_the_one_definition_and_imports_nothing_heavy():
    assert api.default_db_url is db.default_db_url and api.load_config is config.load_config
    assert api.LabelingConfig is config.LabelingConfig
    code = "import sys, labeling_ui.api; print(sorted({'torch', 'gradio', 'numpy', 'pandas'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- no command but serve loads torch or gradio -------------------------------------------------------------------


LOADED = """
import json, sys
from labeling_ui import cli
loaded = {}
for argv in json.loads(sys.argv[1]):
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # --help
        status = exit.code
    heavy = sorted({"torch", "transformers", "gradio"} & set(sys.modules))
    loaded[argv[0]] = [status, heavy]
print(json.dumps(loaded))
"""


def test_no_command_but_serve_imports_torch_or_gradio(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    candidates = write_jsonl(tmp_path / "candidates.jsonl", question_rows(4))
    common = ["--run", "r", "--runs_dir", str(tmp_path / "runs"), "--db", url]
    commands = [
        ["--help"],
        ["import-candidates", *common, "--file", str(candidates)],
        ["simulate", *common, "--rubric", HOUSE_STYLE, "--labelers", "1", "--limit", "1"],
        ["export", *common],
        ["users", "list", *common],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, json.dumps(commands)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {name: [0, []] for name in ("--help", "import-candidates", "simulate", "export", "users")}
    # The house-style rubric scores every reply to these questions alike: the one ranking is all ties, so the export
    # writes 0 pairs and says so with exit status 2. Either way, none of the commands loads torch or gradio.
    expected["export"] = [2, []]
    assert loaded == expected


# --- the package's import graph -----------------------------------------------------------------------------------

# labeling_ui's modules, lowest layer first: a module imports (at its top) only modules of lower layers.
LAYERS = [
    {"rules", "users", "config", "agreement", "db", "timing"},  # pure rules and settings, the schema, timings
    {
        "assignment",
        "stats",
        "admin_tables",
        "layout",
    },  # who gets which item; statistics of stored rankings, as the Admin tab shows them; the page's components
    {"storage"},  # LabelStore: the database work
    {"export", "api"},  # preferences out of the store; the API other packages use
    {"service"},  # what a labeler or admin can do
    # the users of the service: simulated labelers, the labeler's events on the web page, its server
    {"simulate", "labeler", "server"},
    {"admin", "routes"},  # the admin's events; the page's API routes (both check the login as the labeler's do)
    {"page"},  # the web page: the layout wired to the events and the routes
    {"workers"},  # several servers behind nginx
    {"cli"},
    {"__main__"},
]


# The modules of the web page, the only ones that import gradio at their top (the others load them lazily).
WEB_PAGE = {"layout", "labeler", "admin", "routes", "page"}


def module_imports() -> dict[str, tuple[set[str], set[str]]]:
    """labeling_ui module -> (what it imports at the top, what it imports inside functions), as module names. A
    subpackage (``storage``) is one module: the imports of its files together."""
    graph = {}
    subpackage_files = sorted(p for p in PACKAGE.glob("*/*.py") if p.parent.name != "migrations")
    for path in sorted(PACKAGE.glob("*.py")) + subpackage_files:
        tree = ast.parse(path.read_text())
        top_nodes = set(map(id, tree.body))
        top, inner = graph.setdefault(path.stem if path.parent == PACKAGE else path.parent.name, (set(), set()))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from labeling_ui import stats` imports the module labeling_ui.stats
                names = {
                    f"{node.module}.{a.name}" if node.module == "labeling_ui" else node.module for a in node.names
                }
            else:
                continue
            (top if id(node) in top_nodes else inner).update(names)
    return graph


def test_labeling_ui_imports_only_itself_and_the_library_and_lazily_only_gradio():
    project = ("labeling_ui", "pipeline", "reward", "ppo")
    for module, (top, inner) in module_imports().items():
        ours = {name for name in top | inner if name.split(".")[0] in project}
        outside = sorted(n for n in ours if not n.startswith(("labeling_ui", "pipeline.lib")))
        assert not outside, f"{module} imports {outside}: labeling_ui may use labeling_ui.* and pipeline.lib.* only"
        # Function-level imports are for the lazy gradio case only (serve, and the simulation over HTTP), and the
        # matplotlib that Gradio's first event would import, imported as the server starts instead.
        lazy = {"gradio", "gradio_client", "labeling_ui.page", "matplotlib.pyplot"}
        assert inner <= lazy, f"{module} imports {inner} in a function"
        if module not in WEB_PAGE:
            web_page = {"gradio"} | {f"labeling_ui.{m}" for m in WEB_PAGE}
            assert not web_page & top, f"{module} imports gradio at its top"
        assert not {"torch", "transformers"} & (top | inner), module


def test_labeling_ui_modules_import_only_lower_layers():
    graph = module_imports()
    layer = {module: i for i, modules in enumerate(LAYERS) for module in modules} | {"__init__": 0}
    assert set(layer) == set(graph), "a new module of labeling_ui needs its place in LAYERS"
    for module, (top, _) in graph.items():
        ours = {name.split(".")[1] for name in top if name.startswith("labeling_ui.")} - {module}
        upward = sorted(m for m in ours if layer[m] >= layer[module])
        assert not upward, f"labeling_ui.{module} imports {upward}, of its own layer or above"
