"""Labeling for a real team, at the store and the API: no dead ends (any K the page shows, larger items refused at
import, submit and skip only for the item in hand), one truth per item (a stale tab is refused, an edit names its
version), leases that follow attention (short, renewed, released; the last items go to whoever still works), drafts
that survive a restart, admins' reviews and progress, and assignment by index (its query plans).

Store tests run on SQLite and on PostgreSQL (a fresh database per test, dropped afterwards)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from labeling_ui import assignment, stats
from labeling_ui.config import LabelingConfig
from labeling_ui.db import Assignment, make_engine
from labeling_ui.export import export_preferences
from labeling_ui.rules import RankingError, Submission
from labeling_ui.service import LabelingService
from labeling_ui.storage import ALREADY_RANKED, NOT_IN_HAND, LabelStore, StaleForm
from labeling_ui.storage.assign import _NEXT_REGULAR
from tests.labeling_server import ApiClient, LabelingServer, question_rows, store_config


def open_store(url: str, **kwargs) -> LabelStore:
    return LabelStore(url, store_config(**{"overlap": 2, "gold_rate": 0.0, **kwargs}))


@pytest.fixture
def store(db_url):
    store = open_store(db_url)
    yield store
    store.close()


def users(store: LabelStore, *names: str) -> None:
    for name in names:
        store.add_user(name, "password1")


def in_order(view) -> dict[str, int]:
    return {cid: rank for rank, (cid, _) in enumerate(view.candidates, start=1)}


def rank(store: LabelStore, user: str, view, ranks: dict | None = None, **kwargs):
    return store.submit_ranking(user, Submission(uuid.uuid4().hex, view.item_id, ranks or in_order(view)), **kwargs)


# --- B1: no dead ends ---------------------------------------------------------------------------------------------


def test_an_item_larger_than_the_page_is_refused_at_import_with_its_name_and_the_limit(store):
    rows = question_rows(3, k=4)
    rows[1] = question_rows(1, k=9, prefix="big")[0]
    with pytest.raises(ValueError, match=r"row 2 \(prompt_id 'big0'\): 9 candidates, .* at most 8 \(max_candidates"):
        store.import_candidates(rows)
    assert store.labeling_progress().items == 0  # nothing of the file was imported
    small = LabelStore(store.url, LabelingConfig(max_candidates=5))
    try:
        with pytest.raises(ValueError, match="6 candidates, but the labeling page shows at most 5"):
            small.import_candidates(question_rows(1, k=6))
        assert small.import_candidates(question_rows(1, k=5)) == 1
    finally:
        small.close()
    with pytest.raises(ValueError, match="max_candidates must be in 2..8"):
        LabelingConfig(max_candidates=9)


def test_every_k_from_2_to_8_is_handed_out_and_ranked(store):
    for k in range(2, 9):
        store.import_candidates(question_rows(1, k=k, prefix=f"k{k}-"))
    users(store, "ana")
    ks = []
    while (view := store.next_item("ana")) is not None:
        ks.append(len(view.candidates))
        assert rank(store, "ana", view).created
    assert ks == list(range(2, 9))


def test_submit_and_skip_only_for_the_item_in_hand(store):
    """S3: the API accepted a ranking of an item the labeler was never given; a stale page could skip an item the
    labeler had ranked."""
    store.import_candidates(question_rows(3))
    users(store, "ana", "ben")
    given = store.next_item("ana")
    never_given = store.next_item("ben")  # ben holds it; ana was never given it
    assert never_given.item_id != given.item_id
    with pytest.raises(StaleForm, match="not the item you hold"):
        rank(store, "ana", never_given)
    with pytest.raises(StaleForm, match="not the item you hold"):
        store.skip("ana", "skip-1", never_given.item_id, "not mine")
    assert rank(store, "ana", given).created
    with pytest.raises(StaleForm, match="already ranked this item.*cannot be skipped"):
        store.skip("ana", "skip-2", given.item_id, "a stale page")  # the item she ranked: not skipped after all
    assert store.count_rankings() == 1 and store.progress("ana") == (1, 3)
    (ranking,) = store.all_current_rankings()
    assert ranking["username"] == "ana" and ranking["item_id"] == given.item_id


# --- B5: one truth per item ---------------------------------------------------------------------------------------


def test_a_stale_second_tab_never_replaces_a_ranking_and_an_edit_names_its_version(store):
    store.import_candidates(question_rows(2))
    users(store, "ana")
    tab1 = store.next_item("ana")
    tab2 = store.next_item("ana")  # a second tab opened: the same item in hand
    assert tab2.item_id == tab1.item_id
    first = rank(store, "ana", tab1)
    reverse = {cid: 5 - r for cid, r in in_order(tab1).items()}
    with pytest.raises(StaleForm, match="already ranked this item") as refused:
        rank(store, "ana", tab2, reverse)
    assert str(refused.value) == ALREADY_RANKED
    (current,) = store.all_current_rankings()
    assert current["version"] == 1 and current["ranks"] == in_order(tab1)

    edited = rank(store, "ana", tab1, reverse, edits=1)  # the My rankings tab's edit of version 1
    assert edited.created and edited.version == 2 and edited.ranking_id != first.ranking_id
    with pytest.raises(StaleForm, match=r"changed since you opened it \(version 1, now version 2\)"):
        rank(store, "ana", tab1, in_order(tab1), edits=1)  # another tab's edit of the old version
    with pytest.raises(RankingError, match="no ranking of this item to edit"):
        rank(store, "ana", store.next_item("ana"), edits=1)
    assert store.count_rankings() == 2 and store.progress("ana") == (1, 2)


def test_the_service_says_a_stale_page_is_stale(store):
    store.import_candidates(question_rows(1))
    users(store, "ana")
    service = LabelingService(store, LabelingConfig())
    item = service.next_item("ana")
    ranks = {c["id"]: r for r, c in enumerate(item["candidates"], start=1)}
    assert service.submit("ana", Submission("s1", item["item_id"], ranks))["ok"]
    again = service.submit("ana", Submission("s2", item["item_id"], ranks))
    assert again == {"ok": False, "created": False, "version": None, "message": ALREADY_RANKED, "stale": True}
    wrong = service.submit("ana", Submission("s3", item["item_id"], {}), edits=1)
    assert not wrong["ok"] and not wrong["stale"] and "Rank every response" in wrong["message"]


# --- B6: leases that match attention ------------------------------------------------------------------------------


def test_the_last_item_goes_to_the_labeler_still_working_once_the_lease_runs_out(db_url):
    store = open_store(db_url, overlap=1, lease_seconds=1.0)
    try:
        store.import_candidates(question_rows(2))
        users(store, "ana", "ben", "cem")
        ben_item = store.next_item("ben")
        rank(store, "ben", ben_item)
        last = store.next_item("ana")  # ana opens the last item, then walks away (no page renews her lease)
        waiting = store.assign("cem")
        assert waiting.view is None and waiting.held_by_others == 1
        assert (waiting.done, waiting.total) == (0, 0)  # held by ana: not cem's to do, unless it comes back
        time.sleep(1.3)
        got = store.assign("cem")
        assert got.view is not None and got.view.item_id == last.item_id and got.held_by_others == 0
        assert rank(store, "cem", got.view).created
        assert store.assign("ben").view is None and store.assign("ben").held_by_others == 0  # nothing is left
        # ana comes back and submits: her item is still the one she holds, and finished work is kept.
        assert rank(store, "ana", last).created
    finally:
        store.close()


def test_a_renewed_lease_holds_and_a_released_one_frees_the_item_at_once(db_url):
    store = open_store(db_url, overlap=1, lease_seconds=1.0)
    try:
        store.import_candidates(question_rows(1))
        users(store, "ana", "ben")
        item = store.next_item("ana")
        for _ in range(3):  # 1.8 s in all, longer than the lease: the page's heartbeat keeps it
            time.sleep(0.6)
            assert store.renew_lease("ana", item.item_id)
            assert store.next_item("ben") is None
        assert not store.renew_lease("ben", item.item_id)  # not ben's: nothing renewed
        store.release_lease("ana", item.item_id)  # ana's page closes
        assert store.next_item("ben").item_id == item.item_id
        # ana reloads: the item is no longer hers to take (ben's lease fills its one slot), so she gets nothing.
        assert store.next_item("ana") is None
    finally:
        store.close()


def test_a_reload_gets_the_same_item_again_after_the_page_released_it(store):
    store.import_candidates(question_rows(3))
    users(store, "ana", "ben")
    item = store.next_item("ana")
    store.release_lease("ana", item.item_id)  # the pagehide of a reload
    assert store.next_item("ana").item_id == item.item_id
    assert rank(store, "ana", item).created


def test_leases_count_towards_overlap_and_the_progress_says_who_holds_what(store):
    store.import_candidates(question_rows(1))
    users(store, "ana", "ben", "cem")
    assert store.next_item("ana").item_id == store.next_item("ben").item_id  # two slots, two leases
    nothing = store.assign("cem")
    assert nothing.view is None and nothing.held_by_others == 1 and nothing.total == 0


# --- B3: drafts ---------------------------------------------------------------------------------------------------


def test_a_draft_survives_a_restart_and_goes_with_the_submit(db_url):
    store = open_store(db_url)
    store.import_candidates(question_rows(2))
    users(store, "ana")
    item = store.next_item("ana")
    ids = [cid for cid, _ in item.candidates]
    draft = {"ranks": {ids[0]: 1, ids[1]: 3}, "flags": {ids[2]: ["unsafe"]}, "none_acceptable": True, "comment": "hm"}
    assert store.save_draft("ana", item.item_id, draft)
    assert not store.save_draft("ana", "some other item", draft)  # only the item in hand
    store.close()

    store = open_store(db_url)  # the app restarted
    try:
        again = store.next_item("ana")
        assert again.item_id == item.item_id and store.draft("ana", item.item_id) == draft
        assert store.assign("ana").draft == draft  # handed out with the item, as the page shows it
        # What comes back is checked: unknown candidates, ranks out of 1..K and unknown flags are left out.
        assert store.save_draft(
            "ana", item.item_id, {"ranks": {ids[0]: 9, "x": 1}, "flags": {ids[1]: ["nope", "off_topic"]}}
        )
        assert store.draft("ana", item.item_id) == {
            "ranks": {},
            "flags": {ids[1]: ["off_topic"]},
            "none_acceptable": False,
            "comment": "",
        }
        with pytest.raises(RankingError, match="shorten the comment"):
            store.save_draft("ana", item.item_id, {"comment": "x" * 20_000})
        rank(store, "ana", again)
        assert store.draft("ana", item.item_id) is None
        assert store.assign("ana").draft is None  # the next item starts clean
    finally:
        store.close()


# --- gold turns without a pass over the items ---------------------------------------------------------------------


def planned_by_steps(n_done: int, open_regular: int, open_gold: int, rate: float, phase: float) -> int:
    """The plan item by item, as the labeler is given them: the definition ``planned_remaining`` must agree with."""
    remaining = 0
    while open_regular:
        if open_gold and assignment.is_gold_turn(n_done, rate, phase):
            open_gold -= 1
        else:
            open_regular -= 1
        n_done += 1
        remaining += 1
    return remaining


def test_planned_remaining_agrees_with_the_plan_item_by_item():
    # By hand: rate 0.5, phase 0: turns 0, 1, 2, ... are gold at n = 1, 3, 5 (floor((n + 1) / 2) steps up).
    # 3 regular and 5 gold items: R G R G R -> 5 items; with 1 gold item: R G R R -> 4.
    assert assignment.planned_remaining(0, 3, 5, 0.5, 0.0) == planned_by_steps(0, 3, 5, 0.5, 0.0) == 5
    assert assignment.planned_remaining(0, 3, 1, 0.5, 0.0) == 4
    assert assignment.planned_remaining(7, 0, 9, 0.3, 0.2) == 0
    for n_done in (0, 1, 7, 40):
        for open_regular in (0, 1, 2, 5, 33):
            for open_gold in (0, 1, 3, 50):
                for rate in (0.0, 0.1, 0.25, 0.5, 0.9):
                    for phase in (0.0, 0.35, 0.99):
                        expected = planned_by_steps(n_done, open_regular, open_gold, rate, phase)
                        got = assignment.planned_remaining(n_done, open_regular, open_gold, rate, phase)
                        assert got == expected, (n_done, open_regular, open_gold, rate, phase)
    assert assignment.planned_remaining(0, 100_000, 10_000, 0.1, 0.5) == 100_000 + 10_000  # no 100k-step loop


# --- B7: assignment by index --------------------------------------------------------------------------------------


def query_plan(store: LabelStore, query: sa.Select, values: dict) -> str:
    """The database's plan for ``query`` with ``values`` (they do not change it; datetimes are passed as text)."""
    compiled = query.compile(store.engine)
    params = {k: str(v) if isinstance(v, dt.datetime) else v for k, v in (compiled.params | values).items()}
    with store.engine.connect() as connection:
        if store.engine.dialect.name == "sqlite":
            values = tuple(params[name] for name in compiled.positiontup)
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values).all()
            return "\n".join(str(row[-1]) for row in rows)
        connection.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: without this any plan will do
        return "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {compiled}", params).all())


def test_the_next_item_is_found_by_index_not_by_a_pass_over_every_item(store):
    store.import_candidates(question_rows(50))
    users(store, "ana")
    with store.engine.connect() as connection:
        user_id = connection.execute(sa.text("SELECT id FROM users WHERE username = 'ana'")).scalar_one()
    values = {"user": user_id, "cutoff": dt.datetime.now(dt.UTC), "overlap": store.config.overlap}
    plan = query_plan(store, _NEXT_REGULAR, values)
    if store.engine.dialect.name == "sqlite":
        # The queue is read in index order and stops at the first open item; each check is one index lookup.
        assert "SEARCH item_queue USING INDEX ix_item_queue_next (is_gold=? AND n_rankings<?)" in plan, plan
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan  # no pass over a table, no sort
        assert "SEARCH rankings USING INDEX sqlite_autoindex_rankings_1 (item_id=? AND user_id=?)" in plan, plan
        assert "SEARCH skips USING INDEX sqlite_autoindex_skips_1 (item_id=? AND user_id=?)" in plan, plan
        assert "SEARCH assignments USING INDEX sqlite_autoindex_assignments_1 (item_id=?)" in plan, plan
    else:
        assert "ix_item_queue_next" in plan and "Seq Scan on item_queue" not in plan and "Sort" not in plan, plan


def test_the_highest_priority_goes_first_among_items_with_as_many_rankings(store):
    rows = question_rows(4)
    for row, priority in zip(rows, (0.2, 0.9, 0.5, 0.5), strict=True):
        row["priority"] = priority
    store.import_candidates(rows)
    users(store, "ana", "ben")
    given = []

    def take(user):
        view = store.next_item(user)
        given.append((user, view.prompt))
        return view

    ana, ben = take("ana"), take("ben")  # the highest priority, then the highest nobody holds
    rank(store, "ana", ana)
    ana = take("ana")  # an unranked item before a second ranking of q1: q3 (q2, as high, is imported earlier: ben's)
    rank(store, "ben", ben)
    ben = take("ben")  # the last unranked item, q0, before any second ranking
    rank(store, "ana", ana)
    rank(store, "ben", ben)
    ana, ben = take("ana"), take("ben")
    assert given == [
        ("ana", "Question q1?"),
        ("ben", "Question q2?"),
        ("ana", "Question q3?"),
        ("ben", "Question q0?"),
        ("ana", "Question q2?"),  # second rankings, in priority order: q1 (ana ranked it), q2, q3, q0
        ("ben", "Question q1?"),
    ]


def test_a_priority_that_is_not_a_number_is_refused_with_its_row(store):
    rows = question_rows(3)
    rows[0]["priority"] = 0.5
    rows[2]["priority"] = "high"
    with pytest.raises(ValueError, match=r"row 3 \(prompt_id 'q2'\): 'priority' must be a finite number"):
        store.import_candidates(rows)
    rows[2]["priority"] = float("nan")
    with pytest.raises(ValueError, match="'priority' must be a finite number"):
        store.import_candidates(rows)
    assert store.labeling_progress().items == 0  # nothing of the file was imported


def test_the_migration_fills_the_queue_from_the_rankings_already_stored(tmp_path):
    from alembic import command
    from alembic.config import Config

    from labeling_ui.db import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = make_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        now = "2026-11-30 10:00:00"
        connection.exec_driver_sql(
            f"INSERT INTO users VALUES (1, 'ana', 'x', 'labeler', 1, 0, '{now}'), (2, 'ben', 'x', 'labeler', 1, 0, '{now}')"
        )
        for seq, item in enumerate(("i1", "i2", "i3"), start=1):
            connection.exec_driver_sql(
                f"INSERT INTO items VALUES ('{item}', {seq}, 'p{seq}', 'q', '[]', '[]', {int(item == 'i3')}, NULL, "
                f"NULL, '{now}')"
            )
        for rid, (item, user, version, current) in enumerate(
            [("i1", 1, 1, 0), ("i1", 1, 2, 1), ("i1", 2, 1, 1), ("i2", 2, 1, 1)], start=1
        ):
            connection.exec_driver_sql(
                f"INSERT INTO rankings VALUES ({rid}, 's{rid}', '{item}', {user}, {version}, {current}, '{{}}', 0, "
                f"'{{}}', '', 'g', '[]', NULL, '{now}')"
            )
        # The old code left leases in place after a ranking, and could hold two of a labeler's.
        connection.exec_driver_sql(
            f"INSERT INTO assignments VALUES ('i2', 2, '{now}'), ('i2', 1, '2026-11-30 09:00:00'), ('i3', 1, '{now}')"
        )
    engine.dispose()

    store = LabelStore(url)  # migrates to the newest schema
    try:
        with store.engine.connect() as connection:
            queue = connection.exec_driver_sql("SELECT item_id, is_gold, n_rankings, seq FROM item_queue").all()
            leases = connection.execute(sa.select(Assignment.item_id, Assignment.user_id)).all()
        assert sorted(queue) == [("i1", 0, 2, 1), ("i2", 0, 1, 2), ("i3", 1, 0, 3)]
        assert leases == [("i3", 1)]  # ben ranked i2; ana's older lease is dropped
        assert store.rankings_per_item() == {1: 1, 2: 1}
        with store.engine.connect() as connection:
            counts = connection.exec_driver_sql("SELECT is_gold, n_rankings, items FROM item_queue_counts").all()
        assert sorted(counts) == [(0, 1, 1), (0, 2, 1), (1, 0, 1)]
        # The counters are filled from the rows: the queue's by state, each labeler's done items; the lease kept
        # is counted until the store settles it (it ran out long ago).
        assert_counters_hold_the_rows(store)
        for name in ("ana", "ben"):
            assert store.progress(name) == recount_progress(store, name)[:2]
        with store.engine.connect() as connection:
            done = connection.exec_driver_sql("SELECT user_id, n_rankings, ranked, items FROM labeler_counts").all()
        assert sorted(done) == [(1, 2, 1, 1), (2, 1, 1, 1), (2, 2, 1, 1)]
    finally:
        store.close()


# --- progress from counters kept with the queue -------------------------------------------------------------------


def recount_progress(store: LabelStore, username: str) -> tuple[int, int, int]:
    """(ranked, ranked + still to be given, open items held by others), counted from the rows themselves: the
    labeler's rankings and skips, every item's current rankings and the live leases of the others."""
    overlap, cutoff = store.config.overlap, dt.datetime.now(dt.UTC) - store.lease
    with store.engine.connect() as connection:
        user_id, active = connection.execute(
            sa.text("SELECT id, active FROM users WHERE username = :u"), {"u": username}
        ).one()
        gold = dict(connection.execute(sa.text("SELECT id, is_gold FROM items")).tuples().all())
        current = connection.execute(sa.text("SELECT item_id, user_id FROM rankings WHERE is_current")).all()
        ranked = {item for item, user in current if user == user_id}
        skipped = {
            item
            for (item,) in connection.execute(sa.text("SELECT item_id FROM skips WHERE user_id = :u"), {"u": user_id})
        }
        leases = connection.execute(sa.select(Assignment.item_id, Assignment.user_id, Assignment.assigned_at)).all()
    if not active:
        return len(ranked), len(ranked), 0
    n = {item: sum(i == item for i, _ in current) for item in gold}
    others = {
        item: sum(i == item and u != user_id and at.replace(tzinfo=dt.UTC) > cutoff for i, u, at in leases)
        for item in gold
    }
    done = ranked | skipped
    regular_open = {item for item in gold if not gold[item] and n[item] < overlap}
    held = {item for item in regular_open - done if n[item] + others[item] >= overlap}
    open_regular = len(regular_open - done - held)
    gold_left = sum(is_gold and item not in done for item, is_gold in gold.items())
    phase = assignment.gold_phase(username, store.config.seed)
    remaining = assignment.planned_remaining(len(done), open_regular, gold_left, store.config.gold_rate, phase)
    return len(ranked), len(ranked) + remaining, len(held)


def assert_counters_hold_the_rows(store: LabelStore) -> None:
    """Every counter equals a count of the rows it stands for: rankings and counted leases per item, the queue's
    items by state, and each labeler's ranked and skipped items by state."""
    q = sa.text
    with store.engine.connect() as connection:
        queue = {
            i: (bool(g), n, h)
            for i, g, n, h in connection.execute(q("SELECT item_id, is_gold, n_rankings, n_held FROM item_queue"))
        }
        current = connection.execute(q("SELECT item_id, user_id FROM rankings WHERE is_current")).all()
        skips = connection.execute(q("SELECT item_id, user_id FROM skips")).all()
        counted = [i for (i,) in connection.execute(q("SELECT item_id FROM assignments WHERE counted"))]
        queue_counts = connection.execute(q("SELECT is_gold, n_rankings, n_held, items FROM item_queue_counts")).all()
        labeler_counts = connection.execute(
            q("SELECT user_id, is_gold, n_rankings, n_held, ranked, items FROM labeler_counts")
        ).all()
    for item, (_, n, h) in queue.items():
        assert n == sum(i == item for i, _ in current) and h == counted.count(item), item
    by_state = Counter(queue.values())
    assert {(bool(g), n, h): c for g, n, h, c in queue_counts if c} == by_state
    assert all(c >= 0 for *_, c in queue_counts)
    done = Counter((u, *queue[i], True) for i, u in current) + Counter((u, *queue[i], False) for i, u in skips)
    assert {(u, bool(g), n, h, bool(r)): c for u, g, n, h, r, c in labeler_counts if c} == done
    assert all(c >= 0 for *_, c in labeler_counts)


def assert_settled(store: LabelStore, before: dt.datetime, after: dt.datetime) -> None:
    """The leases counted are those live when the store settled them, some time between ``before`` and ``after``."""
    with store.engine.connect() as connection:
        leases = connection.execute(sa.select(Assignment.assigned_at, Assignment.counted)).all()
    for at, counted in leases:
        at = at.replace(tzinfo=dt.UTC)
        assert at > before - store.lease if counted else at <= after - store.lease


def test_progress_from_the_counters_equals_a_recount_from_the_rows(db_url):
    """Assignments, submits, skips, edits, gold items, released, renewed and expired leases: after each step the
    counters equal a count of the rows, and progress (read, or with an item handed out) equals a recount."""
    store = open_store(db_url, overlap=2, gold_rate=0.3, lease_seconds=1.0)
    names = ["ana", "ben", "cem", "dan", "eve", "fay"]
    try:
        store.import_candidates(question_rows(2))  # 4 slots for 6 labelers: the leases fill items
        store.add_gold_items([{**row, "gold_ranking": [1, 2, 3, 4]} for row in question_rows(3, prefix="g")])
        users(store, *names)

        def assign(name):
            before = dt.datetime.now(dt.UTC)
            got = store.assign(name)
            assert_settled(store, before, dt.datetime.now(dt.UTC))
            return got

        def check(got=None, username=None):
            assert_counters_hold_the_rows(store)
            if got is not None:
                assert (got.done, got.total, got.held_by_others) == recount_progress(store, username), username
            for name in names:
                assert store.progress(name) == recount_progress(store, name)[:2], name

        held = {name: assign(name) for name in names}
        check()
        assert {name: got.view.prompt for name, got in held.items()} == {
            "ana": "Question q0?",
            "ben": "Question g0?",  # a gold turn (their phase), as for cem and eve
            "cem": "Question g0?",
            "dan": "Question q1?",
            "eve": "Question g0?",
            "fay": "Question q0?",  # q0's last slot: others see it held
        }
        assert recount_progress(store, "ben")[2] == 1
        assert rank(store, "ana", held["ana"].view).created
        store.skip("ben", uuid.uuid4().hex, held["ben"].view.item_id, "unsure")
        check()
        store.release_lease("dan", held["dan"].view.item_id)  # counted until the next assignment settles it
        check()
        got = assign("ana")
        check(got, "ana")
        first = store.recent_submissions("ana")[0]
        view = store.item_for_edit("ana", first["item_id"])[0]
        assert rank(store, "ana", view, edits=first["version"]).version == 2  # an edit: no count moves
        check()
        assert recount_progress(store, "cem")[2] == 1
        time.sleep(1.3)  # every lease runs out: progress settles them in what it reads, writing nothing
        check()
        assert recount_progress(store, "cem")[2] == 0
        check(assign("ben"), "ben")  # ...and an assignment settles them in the tables
        assert store.renew_lease("cem", held["cem"].view.item_id)  # live again, not counted yet
        check()
        for step in range(40):  # everyone works the queue dry: rank mostly, skip now and then
            name = names[step % len(names)]
            got = assign(name)
            check(got, name)
            if got.view is not None:
                if step % 5 == 3:
                    store.skip(name, uuid.uuid4().hex, got.view.item_id, "no")
                else:
                    assert rank(store, name, got.view).created
            check()
        assert all(store.assign(name).view is None for name in names)
        store.set_active("dan", False)
        check()
    finally:
        store.close()


# --- admins: reviews, progress, agreement ---------------------------------------------------------------------------


def test_an_excluded_item_leaves_the_export_and_the_flagged_queue_shows_the_decisions(store, tmp_path):
    store.import_candidates(question_rows(2))
    users(store, "ana", "ben")
    for name in ("ana", "ben"):
        for _ in range(2):
            view = store.next_item(name)
            flags = {view.candidates[0][0]: ["unsafe"]} if view.prompt.endswith("q0?") else None
            submission = Submission(uuid.uuid4().hex, view.item_id, in_order(view), flags=flags)
            store.submit_ranking(name, submission)
    everything = export_preferences(store, tmp_path / "all")
    (flagged,) = stats.flagged_items(store.all_current_rankings())
    assert flagged["prompt_id"] == "q0" and not flagged["excluded"] and not flagged["reviewed"]

    assert store.set_review(flagged["item_id"], "boss", excluded=True, reviewed=True) == {
        "excluded": True,
        "reviewed": True,
    }
    without = export_preferences(store, tmp_path / "without")
    assert without["items"] == everything["items"] - 1 and without["items_excluded_by_admins"] == 1
    rows = [json.loads(line) for line in (tmp_path / "without" / "preferences.jsonl").read_text().splitlines()]
    assert {r["group_id"] for r in rows} == {"q1"} and without["pairs"] == everything["pairs"] // 2
    (flagged,) = stats.flagged_items(store.all_current_rankings())
    assert flagged["excluded"] and flagged["reviewed"]

    assert store.set_review(flagged["item_id"], "boss", excluded=False) == {"excluded": False, "reviewed": True}
    assert export_preferences(store, tmp_path / "again")["pairs"] == everything["pairs"]
    with pytest.raises(ValueError, match="No item 'nope'"):
        store.set_review("nope", "boss", excluded=True)


def test_progress_by_number_of_rankings_per_import_and_why_agreement_is_empty(store):
    store.import_candidates(question_rows(3))
    store.import_candidates(question_rows(2, prefix="r"))  # a second round
    users(store, "ana", "ben")
    service = LabelingService(store, LabelingConfig(overlap=2))
    store.add_user("boss", "password1", role="admin")
    report = service.admin_report("boss")
    assert report["per_item"] == {0: 5} and report["agreement"]["n_items"] == 0
    assert report["agreement_note"].startswith("No agreement yet: no item has two current rankings yet (none")
    rank(store, "ana", store.next_item("ana"))  # the first item, q0
    report = service.admin_report("boss")
    assert report["per_item"] == {0: 4, 1: 1} and "(1 item has one)" in report["agreement_note"]
    assert [(b["items"], b["rankings"], b["complete"]) for b in report["batches"]] == [(3, 1, 0), (2, 0, 0)]
    while (view := store.next_item("ben")) is not None:  # the unranked items first, q0 last
        rank(store, "ben", view)
    report = service.admin_report("boss")
    assert report["per_item"] == {1: 4, 2: 1} and report["agreement"]["n_items"] == 1
    assert report["agreement_note"] is None
    assert [(b["items"], b["rankings"], b["complete"]) for b in report["batches"]] == [(3, 4, 1), (2, 2, 0)]
    assert "overlap is 1" in stats.agreement_note({"n_items": 0}, [], overlap=1)


def test_admins_manage_users_through_the_service(store):
    users(store, "ana")
    store.add_user("boss", "password1", role="admin")
    service = LabelingService(store, LabelingConfig())
    with pytest.raises(PermissionError):
        service.add_user("ana", "cem")
    password = service.add_user("boss", "cem")
    assert len(password) >= 12 and store.verify_user("cem", password)
    with pytest.raises(ValueError, match="already exists"):
        service.add_user("boss", "cem")
    with pytest.raises(ValueError, match="cannot disable yourself"):
        service.set_active("boss", "boss", False)
    service.set_active("boss", "cem", False)
    assert not store.verify_user("cem", password) and store.role("cem") is None
    service.set_active("boss", "cem", True)
    assert store.verify_user("cem", password)
    new = service.reset_password("boss", "cem")
    assert new != password and store.verify_user("cem", new) and not store.verify_user("cem", password)


def test_a_submit_and_the_next_item_are_one_transaction_stored_together_or_not_at_all(store, monkeypatch):
    store.import_candidates(question_rows(3))
    users(store, "ana")
    service = LabelingService(store, LabelingConfig())
    first = store.next_item("ana")
    submission = Submission(uuid.uuid4().hex, first.item_id, in_order(first))
    result, got = service.submit_and_next("ana", submission)
    assert result["ok"] and result["created"] and got.view is not None and got.view.item_id != first.item_id
    assert (got.done, store.count_rankings()) == (1, 1)
    assert store.assign("ana").view.item_id == got.view.item_id  # the lease handed out with it holds

    # The next item cannot be chosen (the database stops answering half-way): the ranking is not stored either,
    # and the labeler is told to submit again; it is stored once the database answers.
    second = got.view
    retry = Submission(uuid.uuid4().hex, second.item_id, in_order(second))
    real_assign = store._assign

    def fails(*args):
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(store, "_assign", fails)
    result, got = service.submit_and_next("ana", retry)
    assert not result["ok"] and "database does not answer" in result["message"] and got is None
    assert store.count_rankings() == 1
    monkeypatch.setattr(store, "_assign", real_assign)
    result, got = service.submit_and_next("ana", retry)
    assert result["ok"] and result["created"] and store.count_rankings() == 2

    # A refused ranking (not the item in hand) hands out nothing new.
    held = got.view.item_id
    result, got = service.submit_and_next("ana", Submission(uuid.uuid4().hex, first.item_id, in_order(first)))
    assert not result["ok"] and result["stale"] and got is None
    assert store.assign("ana").view.item_id == held


def test_a_role_is_read_at_most_every_few_seconds_and_at_once_after_an_admins_change(store, monkeypatch):
    import labeling_ui.service as service_module

    users(store, "ana")
    store.add_user("boss", "password1", role="admin")
    service = LabelingService(store, LabelingConfig())
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    assert service.role("ana") == "labeler"
    store.set_active("ana", False)  # by another process (the CLI, another app process)
    assert service.role("ana") == "labeler"  # read 0 s ago
    clock[0] += service_module.ROLE_SECONDS
    assert service.role("ana") is None
    store.set_active("ana", True)
    clock[0] += service_module.ROLE_SECONDS
    assert service.role("ana") == "labeler"
    service.set_active("boss", "ana", False)  # by an admin of this process: at once
    assert service.role("ana") is None


# --- the API over HTTP --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("team")
    url = f"sqlite:///{tmp / 'labels.db'}"
    store = LabelStore(url)
    store.import_candidates(question_rows(4))
    for name in ("ana", "ben"):
        store.add_user(name, f"{name}-password")
    store.close()
    with LabelingServer(url, tmp / "runs") as server:
        yield server, url


def test_the_api_refuses_items_not_in_hand_and_keeps_leases_by_heartbeat(app_server):
    server, url = app_server
    ana, ben = ApiClient(server.url, "ana", "ana-password"), ApiClient(server.url, "ben", "ben-password")
    try:
        mine, his = ana.call("next_item"), ben.call("next_item")
        ranks = json.dumps({c["id"]: r for r, c in enumerate(his["candidates"], start=1)})
        refused = ana.call("submit", uuid.uuid4().hex, his["item_id"], ranks, False, "{}", "", 1.0)  # S3
        assert not refused["ok"] and refused["stale"] and refused["message"] == NOT_IN_HAND
        skip = ana.call("skip", uuid.uuid4().hex, his["item_id"], "not mine")
        assert not skip["ok"] and skip["stale"]
        assert ana.call("heartbeat", mine["item_id"]) == {"ok": True}
        assert ana.call("heartbeat", his["item_id"]) == {"ok": False}
        assert ana.call("release", mine["item_id"]) == {"ok": True}
        assert ana.call("next_item")["item_id"] == mine["item_id"]  # a reload: the same item again
        ranks = json.dumps({c["id"]: r for r, c in enumerate(mine["candidates"], start=1)})
        assert ana.call("submit", uuid.uuid4().hex, mine["item_id"], ranks, False, "{}", "", 1.0)["ok"]
        stale = ana.call("submit", uuid.uuid4().hex, mine["item_id"], ranks, False, "{}", "", 1.0)
        assert not stale["ok"] and stale["stale"] and "already ranked" in stale["message"]
        edit = ana.call("edit", uuid.uuid4().hex, mine["item_id"], ranks, 1, False, "{}", "")
        assert edit["ok"] and edit["version"] == 2
    finally:
        ana.close()
        ben.close()
    store = LabelStore(url)
    try:
        assert store.count_rankings() == 2 and store.count_rankings(current_only=True) == 1
    finally:
        store.close()


def test_the_flagged_queue_puts_open_items_first_and_the_newest_flags_first_within():
    def ranking(item: str, at: str, excluded: bool = False, reviewed: bool = False, user: str = "ana") -> dict:
        return {
            "item_id": item,
            "prompt_id": item,
            "prompt": f"prompt {item}",
            "candidates": [{"id": "c0", "text": "a reply"}],
            "flags": {"c0": ["unsafe"]},
            "none_acceptable": False,
            "comment": "",
            "username": user,
            "excluded": excluded,
            "reviewed": reviewed,
            "created_at": at,
        }

    rankings = [
        ranking("excluded", "2026-12-07T10:05:00", excluded=True, reviewed=True),
        ranking("reviewed", "2026-12-07T10:04:00", reviewed=True),
        ranking("old", "2026-12-07T10:01:00"),
        ranking("new", "2026-12-07T10:02:00"),
        ranking("old", "2026-12-07T10:03:00", user="ben"),  # flagged again since: the newest open one
    ]
    queue = stats.flagged_items(rankings)
    assert [item["item_id"] for item in queue] == ["old", "new", "reviewed", "excluded"]
    assert [f["username"] for f in queue[0]["flags"]] == ["ana", "ben"]


def test_the_items_labelers_disagree_on_most_come_first_with_their_mean_pairwise_agreement():
    def ranking(item: str, user: str, ranks: list[int], gold: bool = False) -> dict:
        return {"item_id": item, "prompt_id": item, "prompt": f"prompt {item}", "username": user}, {
            "ranks_list": ranks,
            "is_gold": gold,
        }

    rows = [
        ranking("y", "ana", [1, 2, 3]),
        ranking("y", "ben", [1, 2, 3]),
        ranking("y", "cat", [1, 3, 2]),  # agrees with each of them on 2 of the 3 pairs
        ranking("x", "ana", [1, 2, 3]),
        ranking("x", "ben", [3, 2, 1]),  # every pair reversed
        ranking("z", "ana", [1, 2, 3]),  # one labeler: nothing to disagree on
        ranking("g", "ana", [1, 2, 3], gold=True),
        ranking("g", "ben", [3, 2, 1], gold=True),  # gold items are checked against their answer instead
    ]
    found = stats.disagreements([{**head, **tail} for head, tail in rows])
    assert [item["item_id"] for item in found] == ["x", "y"]
    assert found[0]["agreement"] == 0.0
    assert found[1]["agreement"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # 7/9
    assert found[1]["ranks"] == {"ana": [1, 2, 3], "ben": [1, 2, 3], "cat": [1, 3, 2]}
    assert stats.disagreements([{**head, **tail} for head, tail in rows], limit=1) == found[:1]
