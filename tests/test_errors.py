"""The mistakes a new user makes, through the real entry points: one message that names the cause and the file or
setting, a documented exit status, no traceback, and an earlier run's folder left as it was."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.lib import errors
from pipeline.lib.errors import DataError
from pipeline.lib.tables import read_table
from tests.conftest import REPO


def run_stage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A stage as `make` runs it: through the project's launcher and accelerate."""
    command = [sys.executable, "-m", "pipeline.lib.launch", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def assert_one_clear_message(proc: subprocess.CompletedProcess, status: int, *names: str) -> None:
    text = output(proc)
    assert proc.returncode == status, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert text.count("error (") == 1, text[-3000:]  # printed once, by the main process, last
    last = text.rstrip().splitlines()[-2:]
    for name in names:
        assert name in " ".join(last), (name, last)


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """A finished stage folder of an earlier run, in the same runs/ as the failing ones."""
    stage = tmp_path / "runs" / "earlier" / "sft"
    stage.mkdir(parents=True)
    (stage / "summary.json").write_text(json.dumps({"status": "completed"}))
    (stage / "model").mkdir()
    (stage / "model" / "config.json").write_text("{}")
    return stage.parent


def sft(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "pipeline.sft",
        "--config",
        "configs/sft.yaml",
        "--run",
        "t",
        "--runs_dir",
        str(tmp_path / "runs"),
        "--report_to",
        "none",
        *extra,
    ]


def test_a_model_path_that_does_not_exist(tmp_path, earlier_run, small_sft_data):
    before = folder_hash(earlier_run)
    data = ["--dataset", str(small_sft_data["sft_train"]), "--eval_dataset", str(small_sft_data["sft_eval"])]
    proc = run_stage(*sft(tmp_path, "--model_name_or_path", "/nonexistent/model", *data))
    assert_one_clear_message(
        proc, errors.MISSING_INPUT, "model_name_or_path", "/nonexistent/model", "not a local path"
    )
    assert folder_hash(earlier_run) == before


def test_a_hub_id_while_offline_fails_at_once(tmp_path, small_sft_data):
    data = ["--dataset", str(small_sft_data["sft_train"])]
    proc = run_stage(*sft(tmp_path, "--model_name_or_path", "Qwen/no-such-model", *data), env={"HF_HUB_OFFLINE": "1"})
    assert_one_clear_message(proc, errors.MISSING_INPUT, "Qwen/no-such-model", "offline", "cache")


def test_an_unknown_yaml_key_is_named_with_its_file(tmp_path, micro_model):
    config = tmp_path / "my_sft.yaml"
    config.write_text(f"model_name_or_path: {micro_model}\ndataset: x.jsonl\nlerning_rate: 0.001\n")
    proc = run_stage("-m", "pipeline.sft", "--config", str(config), "--runs_dir", str(tmp_path / "runs"))
    assert_one_clear_message(proc, errors.BAD_SETTING, str(config), "'lerning_rate'", "did you mean 'learning_rate'")


def test_a_negative_learning_rate_is_refused_before_loading(tmp_path, micro_model, small_sft_data):
    data = ["--dataset", str(small_sft_data["sft_train"])]
    proc = run_stage(*sft(tmp_path, "--model_name_or_path", micro_model, *data, "--learning_rate=-1e-4"))
    assert_one_clear_message(proc, errors.BAD_SETTING, "learning_rate must be positive")
    assert "Loading weights" not in output(proc)


def test_a_bad_flag_value_is_one_block_without_the_usage(tmp_path):
    proc = run_stage(*sft(tmp_path, "--learning_rate", "abc"))
    assert_one_clear_message(proc, errors.BAD_SETTING, "--learning_rate: 'abc' is not a number", "--help lists")
    assert "usage:" not in output(proc) and len(output(proc).strip().splitlines()) < 10, output(proc)[-3000:]


@pytest.mark.parametrize(
    "flag, said",
    [
        (["--max_steps", "1.5"], "--max_steps: '1.5' is not a whole number. --help lists every setting"),
        (["--lr_scheduler_type", "sideways"], "--lr_scheduler_type: invalid choice: 'sideways' (choose from 'linear'"),
        (["--learning_rate"], "--learning_rate: expected one argument. --help lists every setting"),
    ],
)
def test_a_bad_flag_value_names_the_flag_and_what_it_takes(flag, said):
    from pipeline.lib.stage import parse
    from pipeline.sft import SFTStageConfig

    with pytest.raises(ValueError) as caught:
        parse(SFTStageConfig, "sft", flag)
    assert str(caught.value).startswith(said), str(caught.value)


def test_pairs_under_the_kway_loss_name_the_setting(tmp_path, micro_model):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    args = ["-m", "reward.train", "--config", "configs/rm.yaml", "--run", "t", "--runs_dir", str(tmp_path / "runs")]
    proc = run_stage(*args, "--model_name_or_path", micro_model, "--preferences", str(pairs), "--report_to", "none")
    assert_one_clear_message(proc, errors.BAD_SETTING, str(pairs), "loss: kway", "--loss pairwise")


def test_data_that_teaches_nothing_gives_the_drop_counts(tmp_path, micro_model):
    pairs = tmp_path / "pairs.jsonl.gz"  # compressed, as public preference sets ship
    rows = [{"prompt": f"Question {i}?", "chosen": "Same.", "rejected": "Same."} for i in range(6)]
    pairs.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    args = ["-m", "reward.train", "--config", "configs/rm.yaml", "--run", "t", "--runs_dir", str(tmp_path / "runs")]
    args += ["--model_name_or_path", micro_model, "--preferences", str(pairs), "--loss", "pairwise"]
    proc = run_stage(*args, "--report_to", "none")
    assert_one_clear_message(proc, errors.BAD_DATA, str(pairs), "6 rows read, 0 usable pairs", "dropped: 6")


def test_the_debug_switch_shows_the_traceback(tmp_path, small_sft_data):
    data = ["--dataset", str(small_sft_data["sft_train"])]
    proc = run_stage(*sft(tmp_path, "--model_name_or_path", "/nonexistent/model", *data), env={"RLHF_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in output(proc) and "MissingInputError" in output(proc)


def test_compressed_tables_are_read(tmp_path):
    import bz2
    import lzma

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "x.json.xz").write_bytes(lzma.compress(json.dumps(rows).encode()))
    (tmp_path / "x.csv.bz2").write_bytes(bz2.compress(b"prompt,completion\na,b\nc,d\n"))
    for name in ("x.jsonl.gz", "x.json.xz", "x.csv.bz2"):
        assert read_table(tmp_path / name) == rows, name
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(lines)[:-8])
    with pytest.raises(DataError, match="could not be decompressed"):
        read_table(tmp_path / "broken.jsonl.gz")


def test_a_json_message_says_at_column_once(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "unterminated\n')
    with pytest.raises(DataError) as caught:
        read_table(path)
    assert "starting at column" in str(caught.value) and "at at" not in str(caught.value)


def test_an_export_without_pairs_says_so_and_exits_non_zero(tmp_path):
    from labeling_ui.rules import Submission
    from labeling_ui.storage import LabelStore

    db = tmp_path / "runs" / "t" / "labeling" / "labels.db"
    db.parent.mkdir(parents=True)
    store = LabelStore(f"sqlite:///{db}")
    item = {"prompt_id": "p0", "prompt": [{"role": "user", "content": "Hi?"}], "candidates": ["Hello.", "Hey."]}
    store.import_candidates([item])
    store.add_user("ana", "password1")
    view = store.next_item("ana")
    store.submit_ranking("ana", Submission("s1", view.item_id, {cid: 1 for cid, _ in view.candidates}))  # a tie
    store.close()
    command = [sys.executable, "-m", "labeling_ui", "export", "--run", "t", "--runs_dir", str(tmp_path / "runs")]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, output(proc)
    assert "wrote 0 preference pairs" in output(proc) and "1 tied" in output(proc)
    assert "Traceback" not in output(proc)
