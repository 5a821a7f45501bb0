"""The pipeline end to end on the smallest settings: every stage runs, a second run skips them all, and changing a
PPO setting re-runs only PPO and the evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.conductor.orchestrate import STAGES, PipelineConfig, plan
from pipeline.lib.launch import threads_per_process
from tests.conftest import REPO

NO_TRACKING = ["--report_to", "none"]


def length_rubric(prompt: str, response: str) -> float:
    """The simulated labelers' rubric here: the micro model's replies are noise the demo rubric scores alike."""
    return float(len(response))


def pipeline_config(tmp_path: Path, micro_model: str, small_sft_data: dict, ppo_lr: str = "1e-3", rounds: int = 1):
    sft = [
        "--model_name_or_path",
        micro_model,
        "--dataset",
        str(small_sft_data["sft_train"]),
        "--eval_dataset",
        str(small_sft_data["sft_eval"]),
        "--max_steps",
        "4",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--max_length",
        "256",
        "--num_samples",
        "2",
        "--sample_max_new_tokens",
        "8",
        "--early_stopping_patience",
        "0",
        *NO_TRACKING,
    ]
    config = {
        "run": "t",
        "runs_dir": str(tmp_path / "runs"),
        "rounds": rounds,
        "labeling": "simulated",
        "gold_share": 0.1,
        "stages": {
            "sft": {"config": "configs/sft.yaml", "args": sft},
            "candidates": {
                "config": "configs/candidates.yaml",
                "args": ["--num_prompts", "16", "--k", "3", "--max_new_tokens", "12", "--batch_size", "8"],
            },
            "labeling": {
                "config": "configs/labeling.yaml",
                "args": ["--labelers", "2", "--rubric", "tests.test_pipeline:length_rubric"],
            },
            "export": {"args": []},
            "rm": {
                "config": "configs/rm.yaml",
                "args": ["--max_steps", "4", "--per_device_train_batch_size", "8", *NO_TRACKING],
            },
            "ppo": {
                "config": "configs/ppo.yaml",
                "args": [
                    "--total_episodes",
                    "16",
                    "--per_device_train_batch_size",
                    "4",
                    "--gradient_accumulation_steps",
                    "2",
                    "--response_length",
                    "12",
                    "--num_prompts",
                    "40",
                    "--eval_prompts",
                    "8",
                    "--num_sample_generations",
                    "0",
                    "--local_rollout_forward_batch_size",
                    "8",
                    "--learning_rate",
                    ppo_lr,
                    "--checkpoint_steps",
                    "0",
                    *NO_TRACKING,
                ],
            },
            "eval": {
                "config": "configs/eval.yaml",
                "args": ["--num_prompts", "8", "--max_new_tokens", "12", *NO_TRACKING],
            },
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_pipeline(config: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def statuses(stdout: str) -> dict[str, str]:
    """stage -> 'ran' / 'skipped', from the table the pipeline prints at the end."""
    table = stdout.rsplit("\nstage", 1)[-1].splitlines()[1:]
    return {line.split()[0]: line.split()[1] for line in table if line and not line.startswith("total")}


def test_plan_covers_every_stage_of_every_round(tmp_path):
    config = PipelineConfig(run="r", runs_dir=str(tmp_path), rounds=2)
    steps = plan(config)
    assert [s.stage for s in steps] == list(STAGES) + list(STAGES[1:])
    round2 = {s.stage: s for s in steps if s.round == 2}
    candidates = " ".join(round2["candidates"].commands[0])
    assert f"--model_name_or_path {tmp_path}/r/ppo/model" in candidates  # round 2 samples from round 1's policy
    assert f"--sft_model_path {tmp_path}/r/sft/model" in " ".join(round2["ppo"].commands[0])
    assert all("--db" in " ".join(c) for s in steps if s.stage in ("labeling", "export") for c in s.commands)


def test_training_stages_get_the_cores_shared_out(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    sft = plan(PipelineConfig(nproc=2))[0].commands[0]
    assert sft[sft.index("--num_cpu_threads_per_process") + 1] == "4"  # accelerate alone would give each one
    assert threads_per_process(16) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(2) == 3


def test_bad_pipeline_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="labeling must be"):
        PipelineConfig(labeling="crowd")
    path = tmp_path / "p.yaml"
    path.write_text("run: x\nroundz: 2\n")
    with pytest.raises(ValueError, match="unknown settings"):
        PipelineConfig.from_yaml(path)


def test_pipeline_runs_every_stage_then_skips_and_reruns_only_what_changed(tmp_path, micro_model, small_sft_data):
    config = pipeline_config(tmp_path, micro_model, small_sft_data)
    first = run_pipeline(config)
    assert set(statuses(first.stdout).values()) == {"ran"}, first.stdout[-3000:]
    run_dir = tmp_path / "runs" / "t"
    for stage in ("sft", "candidates", "export", "rm", "ppo", "eval"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["metrics"], stage
    assert json.loads((run_dir / "export" / "summary.json").read_text())["metrics"]["pairs"] > 0
    report = (run_dir / "report.md").read_text()
    for section in ("## SFT", "## Reward model", "## PPO", "SFT against PPO", "Sample responses"):
        assert section in report
    assert (run_dir / "report.html").exists() and (run_dir / "report_sft_loss.png").exists()

    second = run_pipeline(config)
    assert set(statuses(second.stdout).values()) == {"skipped"}, second.stdout[-3000:]

    changed = pipeline_config(tmp_path, micro_model, small_sft_data, ppo_lr="5e-4")
    third = run_pipeline(changed)
    assert statuses(third.stdout) == {
        **dict.fromkeys(["sft", "candidates", "labeling", "export", "rm"], "skipped"),
        "ppo": "ran",
        "eval": "ran",
    }, third.stdout[-3000:]


def test_a_failing_stage_keeps_earlier_outputs_and_says_how_to_go_on(tmp_path, micro_model, small_sft_data):
    config = pipeline_config(tmp_path, micro_model, small_sft_data)
    raw = yaml.safe_load(config.read_text())
    raw["stages"]["candidates"]["args"] += ["--k", "0"]
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "candidates failed" in proc.stdout and "finished stages are skipped" in proc.stdout
    assert (tmp_path / "runs" / "t" / "sft" / "model").exists()
    assert (tmp_path / "runs" / "t" / "sft" / "pipeline.json").exists()
