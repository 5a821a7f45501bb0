"""The run layout: hashes, summaries, and the errors that say which stage to run first."""

from __future__ import annotations

import json

import pytest

from pipeline.lib import runs
from pipeline.lib.errors import MissingInputError


def test_fingerprint_of_file_and_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("one")
    (tmp_path / "d" / "b.txt").write_text("two")
    first = runs.fingerprint(tmp_path / "d")
    assert first == runs.fingerprint(tmp_path / "d")
    (tmp_path / "d" / "b.txt").write_text("three")
    assert runs.fingerprint(tmp_path / "d") != first
    # sha256("one"), worked out with `printf one | sha256sum`.
    assert runs.fingerprint(tmp_path / "d" / "a.txt") == (
        "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
    )


def test_missing_stage_output_names_the_command(tmp_path):
    with pytest.raises(MissingInputError, match=r"make sft RUN=r1"):
        runs.stage_output("r1", "sft", tmp_path)
    with pytest.raises(MissingInputError, match="does not exist"):
        runs.stage_output("r1", "sft", tmp_path, override=str(tmp_path / "nope"))
    (tmp_path / "r1" / "sft" / "model").mkdir(parents=True)
    assert runs.stage_output("r1", "sft", tmp_path) == tmp_path / "r1" / "sft" / "model"


def test_stage_run_writes_summary_and_config(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Config:
        run: str = "r1"
        lr: float = 0.1

    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    stage = runs.StageRun("sft", "r1", tmp_path)
    summary = stage.finish(
        Config(),
        metrics={"loss": 1.5},
        inputs={"data": data, "model": "org/model"},
        outputs={"model": stage.dir / "model"},
    )
    on_disk = json.loads((tmp_path / "r1" / "sft" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["metrics"] == {"loss": 1.5} and on_disk["status"] == "completed"
    assert on_disk["inputs"]["data"]["sha256"] == runs.fingerprint(data)
    assert on_disk["inputs"]["model"] == {"id": "org/model"}
    assert "lr: 0.1" in (tmp_path / "r1" / "sft" / "config.yaml").read_text()
