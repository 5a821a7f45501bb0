"""Candidate generation: k distinct samples per prompt, provenance, idempotent re-runs, sharding over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.candidates import CandidatesConfig, main, unique_texts
from tests.conftest import REPO, read_jsonl


def test_unique_texts_keeps_order_and_drops_blank_and_repeated():
    assert unique_texts(["a", " a ", "", "b", "c"], k=2) == ["a", "b"]
    assert unique_texts(["b", "c", "d"], k=3, seen=["b"]) == ["b", "c", "d"]


def make_prompts(tmp_path, n: int):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"id": f"p{i}", "prompt": [{"role": "user", "content": f"From: Ana Diaz\nOrder #{i} is late."}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_candidates_are_distinct_with_provenance_and_rerun_adds_nothing_twice(tmp_path, micro_model):
    prompts = make_prompts(tmp_path, 8)
    config = CandidatesConfig(
        run="t",
        runs_dir=str(tmp_path),
        model_name_or_path=micro_model,
        prompts=str(prompts),
        num_prompts=5,
        k=3,
        max_new_tokens=8,
        batch_size=2,
    )
    summary = main(config)
    out = tmp_path / "t" / "candidates" / "candidates.jsonl"
    items = read_jsonl(out)
    assert [item["prompt_id"] for item in items] == ["p0", "p1", "p2", "p3", "p4"]
    for item in items:
        assert len(item["candidates"]) == 3
        assert len({c.strip() for c in item["candidates"]}) == 3
        assert item["provenance"]["model"] == micro_model
        assert item["provenance"]["generation"]["k"] == 3
    assert summary["metrics"]["new_items"] == 5

    # The same config again adds nothing; a larger pool adds only the new prompts.
    assert main(config)["metrics"]["new_items"] == 0
    config.num_prompts = 8
    assert main(config)["metrics"]["new_items"] == 3
    assert [item["prompt_id"] for item in read_jsonl(out)] == [f"p{i}" for i in range(8)]


def test_missing_sft_model_names_the_stage_to_run(tmp_path):
    import pytest

    from pipeline.lib.errors import MissingInputError

    with pytest.raises(MissingInputError, match="make sft RUN=t"):
        main(CandidatesConfig(run="t", runs_dir=str(tmp_path), prompts=str(make_prompts(tmp_path, 2))))


@pytest.mark.slow
def test_two_processes_share_the_prompts(tmp_path, micro_model):
    prompts = make_prompts(tmp_path, 6)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "-m",
        "pipeline.candidates",
        "--run",
        "t",
        "--runs_dir",
        str(tmp_path),
        "--model_name_or_path",
        micro_model,
        "--prompts",
        str(prompts),
        "--k",
        "2",
        "--max_new_tokens",
        "6",
        "--batch_size",
        "2",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    items = read_jsonl(tmp_path / "t" / "candidates" / "candidates.jsonl")
    assert [item["prompt_id"] for item in items] == [f"p{i}" for i in range(6)]
    assert not list((tmp_path / "t" / "candidates").glob(".shard-*"))
