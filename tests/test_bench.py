"""The benchmark runner: a quick run of one case writes its JSON and its table; the measuring helpers hold up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, micro_model) -> Path:
    """A run folder for ``--ppo_run``: the micro model as the SFT policy, and with a scalar head as the reward model
    (the case's own trained models take minutes to build)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path_factory.mktemp("ppo_run")
    shutil.copytree(micro_model, run / "sft" / "model")
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(micro_model, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(run / "rm" / "model")
    tokenizer.save_pretrained(run / "rm" / "model")
    return run


def test_quick_ppo_case_writes_json_table_and_curves(tmp_path, shared_runs, demo_dir, ppo_run):
    from bench import oracle

    # The oracle's venv (TRL 1.12, 1.7 GB) is never built by a test: it runs only if `python -m bench.oracle`
    # built it already.
    with_oracle = oracle.ready()
    if not with_oracle:
        print(f"test_bench: the oracle variant is skipped: {oracle.ORACLE_DIR} is not built (python -m bench.oracle)")
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--cases",
        "ppo",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--oracle",
        "existing",
        "--ppo_run",
        str(ppo_run),
        "--out",
        str(out),
        "--runs_dir",
        str(shared_runs),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (json_path,) = out.glob("*.json")
    (md_path,) = out.glob("*.md")
    assert md_path.stem == json_path.stem
    report = json.loads(json_path.read_text())
    assert report["quick"] and report["repeats"] == 1 and list(report["cases"]) == ["ppo"]
    case = report["cases"]["ppo"]
    assert case["error"] is None and case["skipped"] is None
    variants = ("stage", "oracle") if with_oracle else ("stage",)
    assert sorted(case["variants"]) == sorted(variants)
    for variant in variants:
        (run,) = case["variants"][variant]["runs"]
        assert run["episodes_per_s"] > 0 and run["peak_rss_mb"] > 100
        assert run["generation_s_per_step"] > 0 and run["optimisation_s_per_step"] >= 0
        # The learning curves: one point per step (4 with --quick), the gold rubric's score among them.
        assert len(run["curve"]["episode"]) == 4 and run["curve"]["episode"][-1] == 64
        assert all(0 <= g <= 1 for g in run["curve"]["gold_score"]) and "rm_score_last_quarter" in run
    (ratio,) = [c for c in case["comparisons"] if c.get("metric") == "episodes_per_s"]
    assert ratio["target"] == ">= 1.3"
    table = md_path.read_text()
    assert table in proc.stdout  # the table is also printed
    assert "| ppo | stage | episodes_per_s (episodes/s) |" in table
    (png,) = out.glob("*-ppo-curves.png")
    assert png.stem.startswith(json_path.stem) and png.stat().st_size > 1000
    if with_oracle:
        assert len(ratio["ratios"]) == 1 and ratio["median"] > 0
        assert "| ppo | stage / oracle episodes/s |" in table
        gold = next(c for c in case["comparisons"] if c["name"].startswith("stage gold score"))
        assert "met" in gold and gold["target"].startswith("in [")
    else:
        assert "oracle (TRL 1.12 PPOTrainer) was skipped" in " ".join(case["notes"])


def test_stage_flags_parse_with_the_stages_own_parsers(tmp_path, shared_runs, demo_dir, micro_model, ppo_run):
    """The flags the bench gives each stage, parsed as the stage parses them: the start model, the demo files of the
    bench's runs dir (no config default points at them) and the gold rubric arrive where the stage reads them."""
    from bench import ppo, rm, sft
    from bench.core import Workspace
    from pipeline.lib.stage import parse
    from pipeline.sft import SFTStageConfig
    from ppo.config import PPOStageConfig
    from reward.config import RMStageConfig

    ws = Workspace(shared_runs, tmp_path, quick=True, repeats=1, warmup=0, ppo_run=ppo_run)
    run_dir = ws.run_dir("case", "variant", 0)

    run, model, config = parse(SFTStageConfig, "sft", sft.stage_args(ws, run_dir, sft.training_flags(6), micro_model))
    assert (run.run, run.runs_dir, model.model_name_or_path) == ("bench", str(run_dir), micro_model)
    assert config.dataset == str(demo_dir / "sft_train.jsonl")
    assert config.eval_dataset == str(demo_dir / "sft_eval.jsonl")
    assert config.max_steps == 6 and config.num_samples == 0 and config.completion_only_loss
    assert not config.eval_on_start and not config.load_best_model_at_end and config.eval_strategy == "no"
    # The PPO case's SFT policy: one epoch of configs/sft.yaml on the same inputs.
    _, _, config = parse(SFTStageConfig, "sft", ["--config", "configs/sft.yaml", *sft.demo_inputs(ws), *ppo.SFT_FLAGS])
    assert config.num_train_epochs == 1 and config.eval_strategy == "no" and config.report_to == []

    preferences = tmp_path / "preferences.jsonl"
    rm_args = rm.stage_args(run_dir, micro_model, preferences, rm.training_flags(6))
    _, model, config = parse(RMStageConfig, "rm", rm_args)
    assert model.model_name_or_path == micro_model and config.preferences == str(preferences)
    assert config.loss == "pairwise" and config.max_steps == 6 and config.rubric is None
    _, _, config = parse(RMStageConfig, "rm", ["--config", "configs/rm.yaml", *ppo.RM_FLAGS])
    assert config.loss == "kway" and config.rubric == ppo.RUBRIC == "pipeline.demo.rubric:house_style_score"

    runner = ppo.PPORunner(ws, "ppo", None, steps=4, skip=1)
    _, model, config = parse(PPOStageConfig, "ppo", runner.stage_args(run_dir, seed=3))
    assert model.model_name_or_path == str(ppo_run / "sft" / "model")
    assert config.reward_model_path == [str(ppo_run / "rm" / "model")]
    assert config.prompts == str(demo_dir / "prompts.jsonl") and config.rubric == ppo.RUBRIC
    assert config.seed == 3 and config.total_episodes == 4 * 8 * 2 and config.checkpoint_steps == 0


def test_history_metrics_and_learning_figures():
    from bench.ppo import history_metrics, learning_figures

    # Step 1 took 10 s (start-up); then 3 steps of 2 s and 16 episodes each.
    rows = [
        {
            "step": i + 1,
            "episode": 16 * (i + 1),
            "elapsed_s": 10.0 + 2 * i,
            "timing/generation_s": 0.5,
            "objective/scores": float(i),
            "objective/kl": 0.1 * i,
            "rollout/gold_score": 0.25 * i,
        }
        for i in range(4)
    ]
    m = history_metrics(rows, skip=1)
    assert m["step_s"] == 2.0 and m["episodes_per_s"] == 8.0 and m["generation_s_per_step"] == 0.5
    f = learning_figures(rows)
    assert f["curve"]["episode"] == [16, 32, 48, 64] and f["curve"]["gold_score"] == [0, 0.25, 0.5, 0.75]
    assert (
        f["rm_score_last_quarter"] == 3.0
        and f["gold_score_first"] == 0.0
        and f["kl_last_quarter"] == pytest.approx(0.3)
    )


def report_of(result, repeats: int, warmup: int) -> dict:
    """A report of one case ``result`` as ``python -m bench`` writes it, for ``bench.core.markdown``."""
    machine = {"cpu": "cpu", "cpus": 2, "memory_gb": 1.0, "gpu": None, "load_before": "0", "load_after": "0"}
    return {
        "started": "t",
        "command": "c",
        "repeats": repeats,
        "warmup": warmup,
        "quick": False,
        "machine": machine,
        "cases": {result.name: result.as_dict()},
    }


def test_range_targets_show_in_the_table():
    from bench.core import CaseResult, check_within, markdown

    result = CaseResult("x", "x")
    check_within(result, "stage gold", 0.5, 0.4, 0.6, "min..max over 3 seeds")
    check_within(result, "stage rm", 0.9, 0.4, 0.6, "min..max over 3 seeds")
    assert [c["met"] for c in result.comparisons] == [True, False]
    table = markdown(report_of(result, repeats=3, warmup=0))
    assert "| x | stage rm | 0.9 |  |  | in [0.4, 0.6] (min..max over 3 seeds) | **no** |" in table


def test_oracle_venv_is_rebuilt_when_its_pins_change(tmp_path, monkeypatch):
    from bench import oracle

    monkeypatch.setattr(oracle, "ORACLE_DIR", tmp_path)
    monkeypatch.setattr(oracle, "MARKER", tmp_path / "oracle-pins.json")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    assert not oracle.ready()  # no marker: a half-built venv
    oracle.MARKER.write_text(json.dumps(oracle.wanted()))
    assert oracle.ready()
    monkeypatch.setattr(oracle, "PINS", ("trl==1.11.0",))
    assert not oracle.ready()


def test_unknown_case_is_refused():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--cases", "nope"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "unknown case(s) nope" in proc.stderr


def test_ratios_are_taken_round_by_round():
    from bench.core import CaseResult, Comparison, compare, markdown

    result = CaseResult("x", "x")
    # Round 1 ran on a slow patch of the machine for both variants: the per-round ratios stay 0.5.
    result.runs = {
        "a": [{"round": 0, "v": 10.0}, {"round": 1, "v": 2.0}],
        "b": [{"round": 0, "v": 20.0}, {"round": 1, "v": 4.0}],
    }
    compare(result, Comparison("a / b", "v", "a", "b", (">=", 0.95)))
    (row,) = result.comparisons
    assert row["ratios"] == [0.5, 0.5] and row["median"] == 0.5 and row["met"] is False
    assert "| x | a / b | 0.5x | 0.5 | 0.5 | >= 0.95 | **no** |" in markdown(report_of(result, repeats=2, warmup=1))


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
