"""User accounts on the run the app serves: ``python -m labeling_ui users ...`` with --run/--runs_dir/--db (and
``make users``), enabling a disabled user again, resetting a password."""

from __future__ import annotations

import re
import subprocess

import pytest

from labeling_ui import cli
from labeling_ui.db import default_db_path
from labeling_ui.storage import LabelStore
from tests.conftest import REPO

PASSWORD = re.compile(r"password \(shown only now; pass it on privately\): (\S+)", re.IGNORECASE)


def store_of(runs_dir, run: str) -> LabelStore:
    return LabelStore(f"sqlite:///{default_db_path(run, runs_dir)}")


def test_users_add_on_another_run_writes_that_runs_database_and_the_user_can_log_in(tmp_path, capsys):
    runs_dir = str(tmp_path / "runs")
    # `make users RUN=lab ARGS="add bob"` puts --run before the action; by hand it may come after it too.
    assert cli.main(["users", "--run", "lab", "--runs_dir", runs_dir, "add", "bob"]) == 0
    out = capsys.readouterr().out
    database = default_db_path("lab", runs_dir)
    assert f"Added labeler 'bob' to sqlite:///{database} (run 'lab')." in out
    assert "created just now" in out  # a new database: the note says which app serves it
    bob = PASSWORD.search(out).group(1)
    assert cli.main(["users", "add", "carol", "--role", "admin", "--run", "lab", "--runs_dir", runs_dir]) == 0
    out = capsys.readouterr().out
    assert f"to sqlite:///{database} (run 'lab')" in out and "created just now" not in out
    carol = PASSWORD.search(out).group(1)

    assert not default_db_path("default", runs_dir).exists()  # the default run's database was not touched
    store = store_of(runs_dir, "lab")
    try:
        assert store.verify_user("bob", bob) and store.verify_user("carol", carol)
        assert store.role("carol") == "admin" and not store.verify_user("bob", carol)
    finally:
        store.close()

    assert cli.main(["users", "--run", "lab", "--runs_dir", runs_dir, "list"]) == 0
    out = capsys.readouterr().out
    assert f"Users of sqlite:///{database} (run 'lab'):" in out
    assert re.search(r"^bob\s+labeler\s+True", out, re.M) and re.search(r"^carol\s+admin\s+True", out, re.M)

    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # --db names the database itself
    assert cli.main(["users", "add", "dan", "--db", url]) == 0
    assert f"Added labeler 'dan' to {url}." in capsys.readouterr().out


def test_users_commands_on_a_run_without_a_database_say_so_and_create_nothing(tmp_path, capsys):
    runs_dir = str(tmp_path / "runs")
    for action in (["list"], ["disable", "bob"], ["enable", "bob"], ["reset-password", "bob"]):
        assert cli.main(["users", "--run", "typo", "--runs_dir", runs_dir, *action]) == 2
        err = capsys.readouterr().err
        assert f"There is no labeling database at {default_db_path('typo', runs_dir)}" in err
        assert "--run" in err
    assert not default_db_path("typo", runs_dir).exists()
    assert cli.main(["users", "--run", "lab", "--runs_dir", runs_dir, "add", "bob"]) == 0
    capsys.readouterr()
    assert cli.main(["users", "--run", "lab", "--runs_dir", runs_dir, "enable", "nobody"]) == 2
    assert "No user 'nobody' in sqlite:///" in capsys.readouterr().err


def test_a_disabled_user_is_enabled_again(tmp_path, capsys):
    runs_dir = str(tmp_path / "runs")
    run = ["--run", "lab", "--runs_dir", runs_dir]
    assert cli.main(["users", *run, "add", "bob", "--password", "bob-password"]) == 0
    assert cli.main(["users", *run, "disable", "bob"]) == 0
    assert "Disabled 'bob' in sqlite:///" in capsys.readouterr().out
    store = store_of(runs_dir, "lab")
    try:
        assert not store.verify_user("bob", "bob-password") and store.role("bob") is None
        assert store.session_key("bob") is None  # no session of theirs is valid
        assert cli.main(["users", *run, "enable", "bob"]) == 0
        assert "Enabled 'bob' in sqlite:///" in capsys.readouterr().out
        assert store.verify_user("bob", "bob-password") and store.role("bob") == "labeler"
        store.set_active("bob", False)  # the store's methods, which the Admin tab calls, do the same
        store.set_active("bob", True)
        assert store.verify_user("bob", "bob-password")
        with pytest.raises(ValueError, match="No user 'nobody'"):
            store.set_active("nobody", True)
    finally:
        store.close()


def test_a_reset_password_works_and_the_old_one_no_longer_does(tmp_path, capsys):
    runs_dir = str(tmp_path / "runs")
    run = ["--run", "lab", "--runs_dir", runs_dir]
    assert cli.main(["users", *run, "add", "bob", "--password", "old-password"]) == 0
    store = store_of(runs_dir, "lab")
    try:
        key = store.session_key("bob")
        assert cli.main(["users", *run, "reset-password", "bob"]) == 0
        out = capsys.readouterr().out
        assert "Reset the password of 'bob' in sqlite:///" in out
        new = PASSWORD.search(out).group(1)
        assert len(new) >= 16 and new != "old-password"
        assert store.verify_user("bob", new) and not store.verify_user("bob", "old-password")
        assert store.session_key("bob") not in (None, key)  # the sessions signed with the old key end
        store.reset_password("bob", "chosen-password")  # the store's method, as the Admin tab calls it
        assert store.verify_user("bob", "chosen-password") and not store.verify_user("bob", new)
        with pytest.raises(ValueError, match="must not be empty"):
            store.reset_password("bob", "")
        with pytest.raises(ValueError, match="No user 'nobody'"):
            store.reset_password("nobody", "whatever-password")
    finally:
        store.close()


def test_make_users_runs_the_command_on_the_run_it_is_given():
    result = subprocess.run(
        # --no-print-directory: under `make test` this make is a sub-make, which would print its directory.
        ["make", "--no-print-directory", "-n", "users", "RUN=lab", "ARGS=add bob --role admin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip().splitlines()[-1]
        == ".venv/bin/python -m labeling_ui users --run lab add bob --role admin"
    )
