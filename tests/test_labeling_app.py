"""The labeling app: its config, the service behind the page and the API, the API over HTTP with gradio_client behind
the login (the app runs as a subprocess), and the simulated labelers in process and over HTTP."""

from __future__ import annotations

import json
import random
import re
import stat
import uuid
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa

from labeling_ui import cli
from labeling_ui.config import LabelingConfig, load_config
from labeling_ui.db import Ranking
from labeling_ui.export import ExportConfig
from labeling_ui.export import main as export_main
from labeling_ui.rules import Submission, ranks_from_scores
from labeling_ui.server import ensure_admin
from labeling_ui.service import LabelingService
from labeling_ui.simulate import noisy_ranks, simulate
from labeling_ui.storage import LabelStore
from pipeline.demo.data import generate
from pipeline.demo.rubric import house_style_score
from pipeline.lib.rubric import load_rubric
from tests.conftest import REPO, read_jsonl
from tests.labeling_server import HOUSE_STYLE, LabelingServer, question_rows

CONFIG = REPO / "configs" / "labeling.yaml"
ALICE = ("alice", "alice-password")
SIGN_OFF = "Warmly,\nThe Juniper & Co. team"


def rubric_rows(n: int) -> list[dict]:
    """Demo e-mails, each with its house-style reply and four replies that break rules of the rubric (scores 1, 0.85,
    0.8, 0.85 and 0 or so: close calls, a tie and a clear worst)."""
    rows = [r for r in generate()["sft_train"] if r["style"] == "house"][:n]
    out = []
    for row in rows:
        reply = row["completion"][0]["content"]
        candidates = [
            reply,
            reply.replace(SIGN_OFF, "Kind regards,\nCustomer Support"),
            re.sub(r"^Hi [^,]+,", "Dear customer,", reply),
            reply.replace(SIGN_OFF, "As a valued customer, your satisfaction is our top priority.\n\n" + SIGN_OFF),
            " ".join(reply.split()[:12]),
        ]
        out.append({"prompt_id": row["id"], "prompt": row["prompt"], "candidates": candidates})
    return out


def ranking_rows(url: str) -> list[tuple[str, int, str]]:
    """(submission_id, user_id, item_id) of every stored ranking row, every version."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(Ranking.submission_id, Ranking.user_id, Ranking.item_id)).all()
    finally:
        engine.dispose()


# --- the config --------------------------------------------------------------------------------------------------


def test_the_shipped_config_parses_and_names_no_rubric():
    config = load_config(CONFIG)
    assert config.host == "127.0.0.1"
    assert config.guidelines_version and "**Ties.**" in config.guidelines
    assert config.overlap == 2 and config.noise == [0.05, 0.15]
    assert config.rubric is None  # the pipeline config names the gold rubric and passes it with --rubric
    assert load_rubric(HOUSE_STYLE) is house_style_score


def test_config_errors_say_what_to_change(tmp_path):
    bad = tmp_path / "labeling.yaml"
    bad.write_text("overlap: 2\nnoise_levels: [0.1]\n")
    with pytest.raises(ValueError, match="unknown key 'noise_levels'"):
        load_config(bad)
    with pytest.raises(ValueError, match="noise must list"):
        LabelingConfig(noise=[-0.1])
    with pytest.raises(ValueError, match="module:function"):
        LabelingConfig(rubric="pipeline.demo.data.house_style_score")
    with pytest.raises(ValueError, match="cannot load it"):
        load_rubric("pipeline.demo.rubric:no_such_rubric")


# --- the service: one code path for the page, the API and the simulation ------------------------------------------


@pytest.fixture
def service(tmp_path):
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}", LabelingConfig(overlap=2, gold_rate=0.0))
    store.import_candidates(question_rows(3))
    store.add_user(*ALICE)
    store.add_user("boss", "boss-password", role="admin")
    yield LabelingService(store, LabelingConfig(guidelines_version="g-7"))
    store.close()


def test_submit_is_stored_once_and_refusals_say_what_to_fix(service):
    item = service.next_item("alice")
    assert set(item) == {"item_id", "prompt", "candidates", "done", "total"}
    assert (item["done"], item["total"]) == (0, 3)
    ids = [c["id"] for c in item["candidates"]]

    incomplete = service.submit("alice", Submission("s-0", item["item_id"], {ids[0]: 1}))
    assert not incomplete["ok"] and "Rank every response: 3 of 4 have no rank yet" in incomplete["message"]
    gap = service.submit("alice", Submission("s-0", item["item_id"], dict(zip(ids, [1, 1, 4, 4], strict=True))))
    assert not gap["ok"] and "leave a gap" in gap["message"]

    ranks = dict(zip(ids, [2, 1, 1, 3], strict=True))  # a tie for first place
    flagged = Submission("s-1", item["item_id"], ranks, flags={ids[0]: ["off_topic"]}, seconds_spent=4.0)
    first = service.submit("alice", flagged)
    retry = service.submit("alice", Submission("s-1", item["item_id"], ranks))
    assert first == {"ok": True, "created": True, "version": 1, "message": "Saved.", "stale": False}
    assert retry["ok"] and not retry["created"] and retry["version"] == 1
    stored = service.store.recent_submissions("alice")
    assert len(stored) == 1 and stored[0]["ranks"] == ranks and stored[0]["guidelines_version"] == "g-7"
    assert stored[0]["flags"] == {ids[0]: ["off_topic"]}

    in_order = Submission("s-2", item["item_id"], dict(zip(ids, [1, 2, 3, 4], strict=True)))
    stale = service.submit("alice", in_order)  # a second tab's ranking of the same item: refused, not an edit
    assert not stale["ok"] and stale["stale"] and "already ranked this item" in stale["message"]
    edit = service.submit("alice", in_order, edits=1)
    assert edit["ok"] and edit["version"] == 2 and "edit" in edit["message"]
    assert service.next_item("alice")["item_id"] != item["item_id"]
    assert service.progress("alice") == (1, 3)


def test_skip_needs_a_reason_and_passes_the_item_on(service):
    item = service.next_item("alice")
    refused = service.skip("alice", "k-1", item["item_id"], "  ")
    assert not refused["ok"] and "why" in refused["message"]
    assert service.skip("alice", "k-1", item["item_id"], "I cannot judge this")["ok"]
    assert service.next_item("alice")["item_id"] != item["item_id"]
    assert service.next_item("boss")["item_id"] == item["item_id"]  # still open for the others


def test_the_pages_submit_sends_only_what_changes(service):
    """The next item of as many responses keeps its cards, key hint and rank choices, the empty cards stay empty,
    and what the labeler left as it was is not set again; an item of another size redraws them."""
    import gradio as gr

    from labeling_ui.labeler import LabelerEvents
    from labeling_ui.layout import build_layout

    with gr.Blocks():
        page = build_layout("g-7", "", 8, 5.0)
    events, form, alice = LabelerEvents(service, page), page.form, SimpleNamespace(username="alice")
    submitted = [*form.shown(), page.mine.recent, form.last, form.undo_btn, form.undo_timer]

    def submit(shown: dict) -> dict:
        state = shown[form.state]
        values = {form.state: state, form.item_key: state["item_id"], form.none_ok: False, form.comment: ""}
        for i, slot in enumerate(form.slots):
            values |= {slot.rank: i + 1 if i < len(state["order"]) else None, slot.flags: []}
        return events.on_submit(values, alice)

    shown = events.on_load(alice)
    assert set(form.shown()) <= set(shown)  # the first answer sets everything
    service.store.import_candidates([{**row, "priority": 1.0} for row in question_rows(1, k=2, prefix="two")])
    shown = submit(shown)  # the next item has 2 responses, the one before 4: the cards and the hint change
    assert len(shown[form.state]["order"]) == 2
    assert {form.hint, *(slot.column for slot in form.slots)} <= set(shown)
    shown = submit(shown)  # 2 responses, then 4
    assert {form.hint, *(slot.column for slot in form.slots)} <= set(shown)
    shown = submit(shown)  # 4 and 4
    assert "Saved" in shown[form.status] and shown[form.prompt].startswith("Question")
    left_out = {form.hint, form.wait_timer, form.none_ok, form.comment}
    left_out |= {slot.column for slot in form.slots} | {slot.flags for slot in form.slots}
    left_out |= {part for slot in form.slots[4:] for part in (slot.text, slot.rank)}
    assert not left_out & set(shown)
    assert [shown[slot.rank] for slot in form.slots[:4]] == [None] * 4  # the ranks just given are cleared
    assert len(shown) == 20 and len(submitted) == 48


def test_only_admins_get_the_admin_report_and_the_export(service, tmp_path):
    with pytest.raises(PermissionError):
        service.admin_report("alice")
    with pytest.raises(PermissionError):
        service.export("alice")
    with pytest.raises(PermissionError):
        service.admin_report(None)
    report = service.admin_report("boss")
    assert set(report) == {
        "labelers",
        "agreement",
        "agreement_note",
        "disagreements",
        "flagged",
        "per_item",
        "batches",
        "overlap",
    }
    assert report["per_item"] == {0: 3} and "no item has two current rankings" in report["agreement_note"]


def test_the_first_start_creates_one_admin(tmp_path):
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    try:
        password = ensure_admin(store)
        assert password and store.verify_user("admin", password) and store.role("admin") == "admin"
        assert ensure_admin(store) is None  # an admin exists: nothing printed, nothing created
    finally:
        store.close()


# --- the app over HTTP, behind the login -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    url = f"sqlite:///{tmp / 'labels.db'}"
    store = LabelStore(url)
    store.import_candidates(question_rows(8))
    store.add_user(*ALICE)
    store.close()
    with LabelingServer(url, tmp / "runs") as server:
        yield server, url


def test_gradio_client_ranks_an_item_and_it_is_stored_once(app_server):
    from gradio_client import Client

    server, url = app_server
    client = Client(server.url, auth=ALICE, verbose=False)
    item = client.predict(api_name="/next_item")
    assert len(item["candidates"]) == 4 and item["done"] == 0
    ranks = {c["id"]: rank for rank, c in enumerate(item["candidates"], start=1)}
    submission_id = uuid.uuid4().hex
    args = (submission_id, item["item_id"], json.dumps(ranks), False, "{}", "looks fine", 12.5)
    result = client.predict(*args, api_name="/submit")
    again = client.predict(*args, api_name="/submit")  # a retried request
    assert result == {"ok": True, "created": True, "version": 1, "message": "Saved.", "stale": False}
    assert again["ok"] and not again["created"]

    rows = [r for r in ranking_rows(url) if r.submission_id == submission_id]
    assert len(rows) == 1 and rows[0].item_id == item["item_id"]
    store = LabelStore(url)
    try:
        (stored,) = [r for r in store.recent_submissions("alice") if r["item_id"] == item["item_id"]]
        assert stored["ranks"] == ranks and stored["comment"] == "looks fine"
    finally:
        store.close()
    following = client.predict(api_name="/next_item")
    assert following["item_id"] != item["item_id"] and following["done"] == 1

    refused = client.predict(uuid.uuid4().hex, following["item_id"], "{}", api_name="/submit")
    assert not refused["ok"] and "Rank every response" in refused["message"]
    bad_json = client.predict(uuid.uuid4().hex, following["item_id"], "not json", api_name="/submit")
    assert not bad_json["ok"] and "JSON object" in bad_json["message"]
    skipped = client.predict(uuid.uuid4().hex, following["item_id"], "not my topic", api_name="/skip")
    assert skipped["ok"]


def test_every_api_route_needs_a_login(app_server):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    server, _ = app_server
    with pytest.raises(AuthenticationError):
        Client(server.url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(server.url, auth=("alice", "wrong password"), verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(server.url, auth=("nobody", "alice-password"), verbose=False)
    anonymous = httpx.Client(base_url=server.url, timeout=10)
    try:
        assert anonymous.post("/gradio_api/call/next_item", json={"data": []}).status_code == 401
        assert anonymous.post("/gradio_api/call/submit", json={"data": ["x", "y", "{}"]}).status_code == 401
        assert anonymous.get("/config").status_code == 401
        assert anonymous.get("/gradio_api/info").status_code == 401
    finally:
        anonymous.close()


def test_the_printed_admin_login_works(app_server):
    from gradio_client import Client

    server, _ = app_server
    assert server.admin_password, server.output()
    assert "running at http://127.0.0.1:" in server.output()
    Client(server.url, auth=("admin", server.admin_password), verbose=False)


def test_simulated_labelers_over_http(app_server, tmp_path):
    server, url = app_server
    store = LabelStore(url)
    try:
        summary = simulate(store, LabelingConfig(rubric=HOUSE_STYLE), tmp_path / "users.json", url=server.url, limit=2)
        assert [(lab["username"], lab["submitted"]) for lab in summary["labelers"]] == [("sim-1", 2), ("sim-2", 2)]
        simulated = {u["username"]: u["simulated"] for u in store.list_users()}
        assert simulated["sim-1"] and simulated["sim-2"] and not simulated["alice"]
    finally:
        store.close()


# --- simulated labelers in process -------------------------------------------------------------------------------


def test_noisy_ranks_tie_scores_within_the_tolerance():
    # No noise: 0.90 and 0.87 are within 0.05 of the group's best (0.90), 0.84 is not (0.06 below it) and starts rank 2
    # with 0.82; 0.1 is rank 3.
    scores = [0.87, 0.84, 0.90, 0.1, 0.82]
    assert noisy_ranks(scores, 0.0, random.Random(0), tie_tolerance=0.05) == [1, 2, 1, 3, 2]
    assert noisy_ranks(scores, 0.0, random.Random(0)) == [2, 3, 1, 5, 4]


def test_noisy_ranks_keep_equal_scores_tied():
    assert noisy_ranks([0.5, 0.5, 0.9, 0.1], 0.0, random.Random(0)) == [2, 2, 1, 3]
    for seed in range(20):
        ranks = noisy_ranks([0.5, 0.5, 0.9, 0.1], 0.3, random.Random(seed))
        assert ranks[0] == ranks[1]
    flipped = [noisy_ranks([0.6, 0.5], 0.3, random.Random(seed)) for seed in range(50)]
    assert [1, 2] in flipped and [2, 1] in flipped  # noise flips close calls sometimes, not always


def test_simulation_ranks_everything_twice_agrees_realistically_and_exports_pairs(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    store = LabelStore(url, LabelingConfig(overlap=2, gold_rate=0.0))
    rows = rubric_rows(16)
    store.import_candidates(rows)
    passwords = tmp_path / "users.json"
    try:
        summary = simulate(store, LabelingConfig(rubric=HOUSE_STYLE), passwords)
        assert [(lab["username"], lab["sigma"], lab["submitted"]) for lab in summary["labelers"]] == [
            ("sim-1", 0.05, 16),
            ("sim-2", 0.15, 16),
        ]
        assert store.count_rankings(current_only=True) == 32
        assert store.progress("sim-1") == store.progress("sim-2") == (16, 16)
        agreement = summary["agreement"]
        assert agreement["n_items"] == 16
        assert 0.6 < agreement["pairwise_agreement"] < 1.0  # the noise makes them disagree on some close calls
        assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
        saved = json.loads(passwords.read_text())
        again = simulate(
            store, LabelingConfig(rubric=HOUSE_STYLE), passwords
        )  # nothing left; the same users are reused
        assert [lab["submitted"] for lab in again["labelers"]] == [0, 0]
        assert json.loads(passwords.read_text()) == saved
    finally:
        store.close()

    export = export_main(ExportConfig(run="sim", runs_dir=str(tmp_path / "runs"), db=url))
    pairs = read_jsonl(export["outputs"]["preferences.jsonl"])
    assert export["metrics"]["pairs"] == len(pairs) > 0
    assert export["metrics"]["all_simulated"] and {p["labeler"] for p in pairs} == {"sim-1", "sim-2"}


def test_a_label_budget_goes_to_the_highest_priorities_and_is_kept_across_runs(tmp_path):
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}", LabelingConfig(overlap=2, gold_rate=0.0))
    rows = rubric_rows(10)
    order = [3, 9, 0, 7, 1, 8, 2, 6, 4, 5]  # each row's priority, so the import order is not the priority order
    for row, priority in zip(rows, order, strict=True):
        row["priority"] = priority / 10
    store.import_candidates(rows)
    config = LabelingConfig(rubric=HOUSE_STYLE)
    try:
        summary = simulate(store, config, tmp_path / "users.json", until_rankings=6)
        assert sum(lab["submitted"] for lab in summary["labelers"]) == 6
        ranked = {r["prompt_id"] for r in store.all_current_rankings()}
        assert ranked == {row["prompt_id"] for row, p in zip(rows, order, strict=True) if p >= 4}  # the top 6, once
        again = simulate(store, config, tmp_path / "users.json", until_rankings=6)  # a re-run spends nothing more
        assert [lab["submitted"] for lab in again["labelers"]] == [0, 0]
        more = simulate(store, config, tmp_path / "users.json", until_rankings=14)  # the next round's budget
        assert sum(lab["submitted"] for lab in more["labelers"]) == 8 and store.labeling_progress().rankings == 14
        with pytest.raises(ValueError, match="--until-rankings must be 0 or more"):
            simulate(store, config, tmp_path / "users.json", until_rankings=-1)
    finally:
        store.close()


def test_without_noise_the_simulated_labelers_rank_as_the_rubric(tmp_path):
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}", LabelingConfig(overlap=2, gold_rate=0.0))
    rows = rubric_rows(6)
    store.import_candidates(rows)
    try:
        config = LabelingConfig(noise=[0.0], rubric=HOUSE_STYLE)
        summary = simulate(store, config, tmp_path / "users.json", n_labelers=2)
        assert summary["agreement"]["pairwise_agreement"] == 1.0
        expected = {
            r["prompt_id"]: ranks_from_scores(
                [house_style_score(r["prompt"][0]["content"], c) for c in r["candidates"]]
            )
            for r in rows
        }
        for ranking in store.all_current_rankings():
            assert ranking["ranks_list"] == expected[ranking["prompt_id"]]
        assert any(len(set(ranks)) > 2 for ranks in expected.values())  # the rubric tells the replies apart
    finally:
        store.close()


def test_simulate_command(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    store = LabelStore(url)
    store.import_candidates(rubric_rows(5))
    store.close()
    argv = [
        "simulate",
        "--run",
        "r",
        "--runs_dir",
        str(tmp_path / "runs"),
        "--db",
        url,
        "--config",
        str(CONFIG),
        "--rubric",
        HOUSE_STYLE,
        "--labelers",
        "3",
        "--noise",
        "0.1",
        "--limit",
        "2",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[simulate] 6 rankings" in out and "sim-3 (sigma 0.1): 2 submitted now" in out
    assert (tmp_path / "runs" / "r" / "labeling" / "simulated_users.json").exists()
    assert cli.main([*argv[:-4], "--noise", "-1"]) == 2  # a bad override is a usage error with a message
    assert "noise must list" in capsys.readouterr().err


def test_serve_on_a_busy_port_says_so_and_keeps_the_admin_password(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "labeling_ui",
            "serve",
            "--run",
            "r",
            "--runs_dir",
            str(tmp_path),
            "--port",
            str(port),
        ]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr and "--port N" in result.stderr
    password = result.stdout.split("Log in as 'admin' with password: ")[1].split()[0]
    store = LabelStore(f"sqlite:///{tmp_path / 'r' / 'labeling' / 'labels.db'}")
    try:
        assert store.verify_user("admin", password)
    finally:
        store.close()
