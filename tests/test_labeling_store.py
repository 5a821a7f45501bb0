"""The labeling rules, storage, agreement statistics and the export, against hand-worked examples; SQLite and
PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sqlalchemy as sa
from scipy.stats import kendalltau

from labeling_ui import agreement, assignment, rules, stats
from labeling_ui.config import LabelingConfig
from labeling_ui.db import Base, make_engine
from labeling_ui.export import aggregate_pairs, export_preferences
from labeling_ui.rules import RankingError, Submission, normalize_ranks
from labeling_ui.storage import LabelStore
from pipeline.lib.pairs import ranking_to_pairs


def items(n: int, k: int = 4, prefix: str = "p") -> list[dict]:
    return [
        {
            "prompt_id": f"{prefix}{i}",
            "prompt": [{"role": "user", "content": f"Question {prefix}{i}?"}],
            "candidates": [f"answer {j} to {prefix}{i}" for j in range(k)],
        }
        for i in range(n)
    ]


@pytest.fixture
def store(db_url):
    store = LabelStore(db_url, LabelingConfig(overlap=2, gold_rate=0.0))
    yield store
    store.close()


def rank_in_order(store: LabelStore, user: str, submission_id: str, reverse: bool = False):
    view = store.next_item(user)
    ids = [cid for cid, _ in view.candidates]
    ids = ids[::-1] if reverse else ids
    ranks = {cid: r + 1 for r, cid in enumerate(ids)}
    return view, store.submit_ranking(user, Submission(submission_id, view.item_id, ranks))


# --- agreement: hand-worked ---------------------------------------------------------------------------------------


def test_rank_forms():
    assert rules.dense_ranks([10, 10, 30, 20]) == [1, 1, 3, 2]
    assert rules.competition_ranks([10, 10, 30, 20]) == [1, 1, 4, 3]
    assert rules.ranks_from_scores([0.2, 0.9, 0.2 + 1e-9]) == [2, 1, 2]  # highest score first; float noise ties


def test_pairwise_agreement_counts_ties_as_a_relation():
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); a: <,<,<,<,<,<  b: =,<,<,<,<,<  -> 5 of 6 agree
    assert agreement.pairwise_agreement([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / 6)
    # b: =,<,<,<,<,> -> 4 of 6
    assert agreement.pairwise_agreement([1, 2, 3, 4], [1, 1, 3, 2]) == pytest.approx(4 / 6)
    assert agreement.pairwise_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == 0.0


def test_kendall_tau_b_by_hand_and_against_scipy():
    # a = [1,2,3,4], b = [1,1,2,3]: C = 5 (every untied pair concordant), D = 0, ties_b = 1
    # tau_b = 5 / sqrt(6 * 5) = 0.9129
    assert agreement.kendall_tau_b([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / np.sqrt(30))
    a, b = [2, 1, 4, 3, 1], [1, 2, 3, 3, 2]
    assert agreement.kendall_tau_b(a, b) == pytest.approx(kendalltau(a, b).statistic)
    assert agreement.kendall_tau_b([1, 1], [1, 2]) is None


def test_krippendorff_alpha():
    assert agreement.krippendorff_alpha_ordinal([[1, 2, 3, 4], [1, 2, 3, 4]]) == pytest.approx(1.0)
    assert agreement.krippendorff_alpha_ordinal([[1, 2, 3, 4], [4, 3, 2, 1]]) < 0
    assert agreement.krippendorff_alpha_ordinal([[1, np.nan], [np.nan, 2]]) is None  # no unit rated twice


def test_agreement_summary_averages_labeler_pairs_then_items():
    summary = agreement.agreement_summary(
        {
            "i1": {"x": [1, 2, 3, 4], "y": [1, 2, 3, 4]},
            "i2": {"x": [1, 2, 3, 4], "y": [1, 1, 2, 3]},
            "i3": {"x": [1, 2, 3, 4]},  # one labeler: not shared, left out
        }
    )
    assert summary["n_items"] == 2 and summary["n_labeler_pairs"] == 2
    assert summary["pairwise_agreement"] == pytest.approx((1 + 5 / 6) / 2)
    assert summary["kendall_tau"] == pytest.approx((1 + 5 / np.sqrt(30)) / 2)
    assert 0 < summary["krippendorff_alpha"] < 1


# --- rankings to pairs: hand-worked -------------------------------------------------------------------------------


def test_k4_ranking_gives_six_pairs_with_gaps():
    pairs = ranking_to_pairs(["a", "b", "c", "d"], [2, 1, 4, 3])
    assert sorted(pairs) == sorted([(1, 0, 1), (0, 3, 1), (0, 2, 2), (1, 3, 2), (1, 2, 3), (3, 2, 1)])


def test_ties_give_no_pair():
    # [1, 1, 2, 3]: the tied pair (0, 1) drops; 5 pairs remain
    assert sorted(ranking_to_pairs(list("abcd"), [1, 1, 2, 3])) == [
        (0, 2, 1),
        (0, 3, 2),
        (1, 2, 1),
        (1, 3, 2),
        (2, 3, 1),
    ]
    assert ranking_to_pairs(list("ab"), [1, 1]) == []


def test_aggregations():
    rankings = {"x": [1, 2, 3], "y": [2, 1, 3], "z": [1, 3, 2]}
    everything, dropped = aggregate_pairs(rankings, "all")
    assert len(everything) == 9 and dropped["ties"] == 0
    # pair (0,1): x,z say 0 > 1, y says 1 > 0 -> majority 0 > 1; (0,2): all say 0 > 2; (1,2): x,y say 1 > 2
    majority, dropped = aggregate_pairs(rankings, "majority")
    assert sorted((c, r) for c, r, _, _ in majority) == [(0, 1), (0, 2), (1, 2)]
    consensus, dropped = aggregate_pairs(rankings, "drop_contested")
    assert [(c, r) for c, r, _, _ in consensus] == [(0, 2)] and dropped["contested"] == 2
    # an even vote is contested; a labeler who tied a pair abstains; a pair everyone tied is a tie
    kept, dropped = aggregate_pairs({"x": [1, 2, 2], "y": [2, 1, 2]}, "majority")
    assert sorted((c, r) for c, r, _, _ in kept) == [(0, 2), (1, 2)] and dropped == {"contested": 1}
    _, dropped = aggregate_pairs({"x": [1, 1, 2], "y": [1, 1, 2]}, "majority")
    assert dropped == {"ties": 1}


# --- validation of a submitted ranking ----------------------------------------------------------------------------


def test_normalize_ranks_accepts_dense_and_competition_forms():
    ids = ["a", "b", "c", "d"]
    assert normalize_ranks({"a": 1, "b": 1, "c": 3, "d": 4}, ids) == {"a": 1, "b": 1, "c": 2, "d": 3}
    assert normalize_ranks({"a": "2", "b": 1, "c": 3.0, "d": 4}, ids) == {"a": 2, "b": 1, "c": 3, "d": 4}


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ({"a": 1, "b": 2, "c": 3}, "1 of 4 have no rank"),
        ({"a": 1, "b": 2, "c": 3, "d": 5}, "out of range"),
        ({"a": 2, "b": 2, "c": 3, "d": 4}, "best response gets rank 1"),
        ({"a": 1, "b": 1, "c": 4, "d": 4}, "leave a gap"),
        ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 1}, "out of date"),
        ({"a": 1, "b": 2, "c": 3, "d": "x"}, "whole numbers"),
    ],
)
def test_normalize_ranks_explains_what_is_wrong(ranks, message):
    with pytest.raises(RankingError, match=message):
        normalize_ranks(ranks, ["a", "b", "c", "d"])


# --- the store, on SQLite and PostgreSQL --------------------------------------------------------------------------


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    LabelStore(db_url).close()
    engine = make_engine(db_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: add a revision under labeling_ui/migrations ({diff})"


def test_import_is_idempotent_and_validates(store):
    assert store.import_candidates(items(3)) == 3
    assert store.import_candidates(items(4)) == 1
    bad = items(1)
    bad[0]["candidates"] = ["same", "same "]
    with pytest.raises(ValueError, match="row 1 .*same text"):
        store.import_candidates(bad)


def test_submit_is_idempotent_and_edits_are_new_versions(store):
    store.import_candidates(items(2))
    store.add_user("ana", "password1")
    view, first = rank_in_order(store, "ana", "s1")
    assert first.created and first.version == 1
    ids = [cid for cid, _ in view.candidates]
    again = store.submit_ranking("ana", Submission("s1", view.item_id, {cid: r + 1 for r, cid in enumerate(ids)}))
    assert not again.created and again.ranking_id == first.ranking_id
    reversed_ranks = {cid: 4 - r for r, cid in enumerate(ids)}
    with pytest.raises(RankingError, match="already ranked this item"):  # a new ranking of it: a stale page
        store.submit_ranking("ana", Submission("s2", view.item_id, reversed_ranks))
    edit = store.submit_ranking("ana", Submission("s2", view.item_id, reversed_ranks), edits=1)
    assert edit.created and edit.version == 2
    with pytest.raises(RankingError, match="changed since you opened it"):  # an edit of version 1 again
        store.submit_ranking("ana", Submission("s3", view.item_id, reversed_ranks), edits=1)
    assert store.count_rankings() == 2 and store.count_rankings(current_only=True) == 1
    (current,) = store.all_current_rankings()
    assert current["version"] == 2 and current["ranks"][ids[0]] == 4
    with pytest.raises(RankingError, match="another item"):
        other = store.next_item("ana")
        store.submit_ranking("ana", Submission("s1", other.item_id, {cid: 1 for cid, _ in other.candidates}))


def test_reads_do_not_wait_for_a_writer_and_concurrent_writers_all_land(store, db_url):
    store.import_candidates(items(24))
    names = [f"lab{i}" for i in range(8)]
    for name in names:
        store.add_user(name, "password1")
    rank_in_order(store, "lab0", "first")

    # Another connection (an import, the export, a second server) holds a write transaction open: what the app
    # reads on every call must still answer at once.
    other = make_engine(db_url)
    held, release = threading.Event(), threading.Event()

    def hold_write_lock():
        with other.begin() as connection:
            connection.execute(sa.text("UPDATE users SET simulated = simulated WHERE username = 'lab1'"))
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    try:
        assert held.wait(10)
        with ThreadPoolExecutor(1) as pool:
            reads = pool.submit(
                lambda: (
                    store.role("lab0"),
                    store.progress("lab0"),
                    store.count_rankings(),
                    len(store.recent_submissions("lab0")),
                    store.verify_user("lab0", "password1"),
                )
            )
            assert reads.result(timeout=5) == ("labeler", (1, 24), 1, 1, True)
    finally:
        release.set()
        holder.join()
        other.dispose()

    # Many writers at once in one process: each one's next_item and submit lands, none fails or is lost.
    def work(name: str) -> int:
        return sum(rank_in_order(store, name, f"{name}-{n}")[1].created for n in range(2))

    with ThreadPoolExecutor(len(names)) as pool:
        assert sum(pool.map(work, names)) == 2 * len(names)
    assert store.count_rankings() == 2 * len(names) + 1


def test_overlap_never_twice_and_skips_go_to_others(store):
    store.import_candidates(items(2))
    for name in ("ana", "ben", "cem"):
        store.add_user(name, "password1")
    seen = {name: [] for name in ("ana", "ben", "cem")}
    for name in ("ana", "ben"):
        for n in range(2):
            view, _ = rank_in_order(store, name, f"{name}{n}")
            seen[name].append(view.item_id)
        assert store.next_item(name) is None  # nothing is given twice
        assert len(set(seen[name])) == 2
    assert store.next_item("cem") is None  # both items have their 2 labelers
    assert store.progress("ana") == (2, 2)

    store.import_candidates(items(1, prefix="q"))
    skipped = store.next_item("ana")
    store.skip("ana", "skip-1", skipped.item_id, "I cannot judge this one")
    store.skip("ana", "skip-1", skipped.item_id, "I cannot judge this one")  # a retry stores nothing twice
    assert store.next_item("ana") is None
    assert store.next_item("ben").item_id == skipped.item_id
    assert store.next_item("cem").item_id == skipped.item_id  # the lease of ben still leaves the second slot


def test_items_with_fewer_rankings_come_first_and_display_order_is_per_labeler(store):
    store.import_candidates(items(3))
    store.add_user("ana", "password1")
    store.add_user("ben", "password1")
    first_ana, _ = rank_in_order(store, "ana", "a1")
    first_ben = store.next_item("ben")
    assert first_ben.item_id != first_ana.item_id  # the unranked item comes before the one ana did
    assert store.next_item("ben").candidates == first_ben.candidates  # the same item again until done


def test_gold_items_are_mixed_in_at_the_rate(db_url):
    store = LabelStore(db_url, LabelingConfig(overlap=1, gold_rate=0.25))
    try:
        store.import_candidates(items(12))
        gold = items(4, prefix="g")
        for row in gold:
            row["gold_ranking"] = [1, 2, 3, 4]
        assert store.add_gold_items(gold) == 4
        store.add_user("ana", "password1")
        got = []
        while (view := store.next_item("ana")) is not None:
            got.append(view.item_id)
            ids = dict(view.candidates)
            gold_order = {cid: int(text.split()[1]) + 1 for cid, text in ids.items()}
            store.submit_ranking("ana", Submission(f"s{len(got)}", view.item_id, gold_order))
        labelers = stats.labeler_stats(store.list_users(), store.all_current_rankings())
        ana = {s["username"]: s for s in labelers}["ana"]
        # 12 regular items at a gold rate of 1/4: 3 or 4 gold items among them (the phase decides), none after
        assert ana["gold_done"] in (3, 4) and len(got) == 12 + ana["gold_done"]
        assert ana["gold_accuracy"] == pytest.approx(1.0)
    finally:
        store.close()


def test_gold_turns_are_spread():
    turns = [assignment.is_gold_turn(n, 0.1, 0.35) for n in range(100)]
    assert sum(turns) == 10
    assert all(sum(turns[i : i + 20]) in (1, 2, 3) for i in range(80))


def test_export_writes_pairs_and_is_byte_identical(store, tmp_path):
    store.import_candidates(items(3))
    for name in ("ana", "ben"):
        store.add_user(name, "password1", simulated=True)
        for n in range(3):
            rank_in_order(store, name, f"{name}{n}", reverse=(name == "ben" and n == 0))
    first = export_preferences(store, tmp_path / "a")
    second = export_preferences(store, tmp_path / "b")
    for name in ("preferences.jsonl", "preferences.parquet", "rankings.jsonl"):
        digest = [hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in "ab"]
        assert digest[0] == digest[1], name
    assert first == second and first["pairs"] == 6 * 6 and first["rankings"] == 6 and first["all_simulated"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "preferences.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "group_id", "item_id", "rank_gap", "labeler"}
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    assert {r["group_id"] for r in rows} == {"p0", "p1", "p2"}
    majority = export_preferences(store, tmp_path / "m", aggregation="majority")
    assert majority["pairs"] < first["pairs"]
