"""The benchmark runner: a quick run of one case writes its JSON and its table; the measuring helpers hold up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_quick_ppo_case_writes_json_and_table(tmp_path, shared_runs, demo_dir):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "--quick", "--cases", "ppo", "--repeats", "1", "--threads", "1",
           "--out", str(out), "--runs_dir", str(shared_runs)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (json_path,) = out.glob("*.json")
    (md_path,) = out.glob("*.md")
    assert md_path.stem == json_path.stem
    report = json.loads(json_path.read_text())
    assert report["quick"] and report["repeats"] == 1 and list(report["cases"]) == ["ppo"]
    case = report["cases"]["ppo"]
    assert case["error"] is None and case["skipped"] is None
    for variant in ("stage", "plain_trl"):
        (run,) = case["variants"][variant]["runs"]
        assert run["episodes_per_s"] > 0 and run["peak_rss_mb"] > 100
        assert run["generation_s_per_step"] > 0 and run["optimisation_s_per_step"] >= 0
    # The stage's own timings, read from its history.jsonl.
    assert case["variants"]["stage"]["runs"][0]["stage_generation_s"] > 0
    (ratio,) = [c for c in case["comparisons"] if c["metric"] == "episodes_per_s"]
    assert ratio["target"] == ">= 0.95" and len(ratio["ratios"]) == 1 and ratio["median"] > 0

    table = md_path.read_text()
    assert "| ppo | stage / plain TRL episodes/s |" in table
    assert "| ppo | plain_trl | episodes_per_s (episodes/s) |" in table
    assert table in proc.stdout  # the table is also printed


def test_unknown_case_is_refused():
    proc = subprocess.run([sys.executable, "-m", "bench", "--cases", "nope"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "unknown case(s) nope" in proc.stderr


def test_ratios_are_taken_round_by_round():
    from bench.core import CaseResult, Comparison, compare, markdown

    result = CaseResult("x", "x")
    # Round 1 ran on a slow patch of the machine for both variants: the per-round ratios stay 0.5.
    result.runs = {"a": [{"round": 0, "v": 10.0}, {"round": 1, "v": 2.0}],
                   "b": [{"round": 0, "v": 20.0}, {"round": 1, "v": 4.0}]}  # fmt: skip
    compare(result, Comparison("a / b", "v", "a", "b", (">=", 0.95)))
    (row,) = result.comparisons
    assert row["ratios"] == [0.5, 0.5] and row["median"] == 0.5 and row["met"] is False
    report = {"started": "t", "command": "c", "repeats": 2, "warmup": 1, "quick": False,
              "machine": {"cpu": "cpu", "cpus": 2, "memory_gb": 1.0, "gpu": None, "load_before": "0",
                          "load_after": "0"},
              "cases": {"x": result.as_dict()}}  # fmt: skip
    assert "| x | a / b | 0.5x | 0.5 | 0.5 | >= 0.95 | **no** |" in markdown(report)


def test_percentile_interpolates():
    from bench.labeling import percentile

    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 99) == pytest.approx(9.9)
    assert percentile([7], 99) == 7


def test_training_metrics_skip_the_first_steps():
    from bench.core import training_metrics

    # Step 1 took 10 s (start-up); then 3 steps of 2 s, 100 tokens and 4 rows each.
    steps = [{"t": 11.0, "tokens": 100.0, "padded_tokens": 200.0, "rows": 4.0}] + [
        {"t": 11.0 + 2 * i, "tokens": 100.0, "padded_tokens": 200.0, "rows": 4.0} for i in (1, 2, 3)
    ]
    rank = {"rank": 0, "steps": steps, "train_begin_t": 1.0, "train_end_t": 17.5, "peak_rss_mb": 500.0}
    m = training_metrics([rank], skip_steps=1)
    assert m["step_s"] == 2.0 and m["tokens_per_s"] == 50.0 and m["samples_per_s"] == 2.0
    assert m["padding_share"] == 0.5 and m["startup_s"] == 1.0 and m["train_s"] == 16.5
    # A second rank doubles the tokens and rows; time comes from rank 0.
    m2 = training_metrics([rank, {**rank, "rank": 1}], skip_steps=1)
    assert m2["tokens_per_s"] == 100.0 and m2["samples_per_s"] == 4.0
