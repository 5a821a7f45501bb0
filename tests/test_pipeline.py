"""The pipeline end to end on the smallest settings: every stage runs, a second run skips them all, and changing a
PPO setting re-runs only PPO and the evaluation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from labeling_ui.storage import LabelStore
from pipeline.conductor.config import STAGES, PipelineConfig
from pipeline.conductor.orchestrate import plan, upstream_of
from pipeline.lib.launch import threads_per_process
from tests.conftest import REPO, read_jsonl

NO_TRACKING = ["--report_to", "none"]


# A team's own rubric, in a module outside the project (on PYTHONPATH only through the test). Its scores sit far from
# the demo rubric's [0, 1], so a gold figure that came from anywhere else shows; each process that calls it leaves
# its command line in RUBRIC_LOG, so every stage that scores can be seen to have called it.
TEAM_RUBRIC = """
import os, sys


def score(prompt: str, response: str) -> float:
    global _logged
    if not globals().get("_logged") and os.environ.get("RUBRIC_LOG"):
        with open(os.environ["RUBRIC_LOG"], "a") as fh:
            fh.write(" ".join(sys.argv) + "\\n")
        _logged = True
    return 10.0 + len(response) / 1000
"""


def team_rubric(prompt: str, response: str) -> float:
    return 10.0 + len(response) / 1000


def pipeline_config(
    tmp_path: Path, micro_model: str, small_sft_data: dict, demo_dir: Path, ppo_lr: str = "1e-3", rounds: int = 1
):
    (tmp_path / "rubrics").mkdir(exist_ok=True)
    (tmp_path / "rubrics" / "team_rubric.py").write_text(TEAM_RUBRIC)
    sft = ["--model_name_or_path", micro_model, "--dataset", str(small_sft_data["sft_train"])]
    sft += ["--eval_dataset", str(small_sft_data["sft_eval"]), "--max_steps", "4", "--eval_steps", "2"]
    sft += ["--save_steps", "2", "--per_device_train_batch_size", "8", "--max_length", "256", "--num_samples", "2"]
    sft += ["--sample_max_new_tokens", "8", "--early_stopping_patience", "0", *NO_TRACKING]
    candidates = ["--prompts", str(demo_dir / "prompts.jsonl"), "--num_prompts", "16", "--k", "3"]
    candidates += ["--max_new_tokens", "12", "--batch_size", "8"]
    ppo = [
        "--prompts",
        str(demo_dir / "prompts.jsonl"),
        "--total_episodes",
        "16",
        "--per_device_train_batch_size",
        "4",
    ]
    ppo += ["--gradient_accumulation_steps", "2", "--response_length", "12", "--num_prompts", "40"]
    ppo += ["--eval_prompts", "8", "--num_sample_generations", "0", "--local_rollout_forward_batch_size", "8"]
    ppo += ["--learning_rate", ppo_lr, "--checkpoint_steps", "0", *NO_TRACKING]
    evaluation = ["--prompts", str(demo_dir / "eval_prompts.jsonl"), "--num_prompts", "8", "--max_new_tokens", "12"]
    evaluation += ["--best_of_n", "1", "4", "--best_of_n_prompts", "4"]
    # An ensemble of two reward models: PPO and the evaluation read both members.
    rm = ["--max_steps", "4", "--per_device_train_batch_size", "8", "--ensemble", "2", *NO_TRACKING]
    config = {
        "run": "t",
        "runs_dir": str(tmp_path / "runs"),
        "rounds": rounds,
        "labeling": "simulated",
        "rubric": "team_rubric:score",
        "gold_share": 0.1,
        "stages": {
            "sft": {"config": "configs/sft.yaml", "args": sft},
            "candidates": {"config": "configs/candidates.yaml", "args": candidates},
            "labeling": {"config": "configs/labeling.yaml", "args": ["--labelers", "2"]},
            "export": {"args": []},
            "rm": {"config": "configs/rm.yaml", "args": rm},
            "ppo": {"config": "configs/ppo.yaml", "args": ppo},
            "dpo": {"config": "configs/dpo.yaml", "args": ["--max_steps", "4", "--max_length", "256", *NO_TRACKING]},
            "eval": {"config": "configs/eval.yaml", "args": [*evaluation, *NO_TRACKING]},
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pipeline_env(config: Path) -> dict[str, str]:
    """PYTHONPATH with the team's rubric module beside the repository, as a user would set it."""
    path = os.pathsep.join([str(REPO), str(config.parent / "rubrics")])
    return {**os.environ, "PYTHONPATH": path, "RUBRIC_LOG": str(config.parent / "rubric_calls.txt")}


def run_pipeline(config: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), *extra],
        cwd=REPO,
        env=pipeline_env(config),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def statuses(stdout: str) -> dict[str, str]:
    """stage -> 'ran' / 'skipped', from the table the pipeline prints at the end."""
    table = stdout.rsplit("\nstage", 1)[-1].splitlines()[1:]
    rows = (re.match(r"(\S+(?: \(round \d+\))?)\s+(\S+)", line) for line in table if not line.startswith("total"))
    return dict(row.groups() for row in rows if row)


def test_plan_covers_every_stage_of_every_round(tmp_path):
    config = PipelineConfig(run="r", runs_dir=str(tmp_path), rounds=2)
    steps = plan(config)
    usual = [s for s in STAGES if s != "dpo"]  # DPO runs only when `stages:` names it
    assert [s.stage for s in steps] == usual + usual[1:]
    with_dpo = plan(PipelineConfig(run="r", runs_dir=str(tmp_path), stages={"dpo": {"args": ["--beta", "0.2"]}}))
    assert [s.stage for s in with_dpo] == list(STAGES)
    dpo = " ".join(next(s for s in with_dpo if s.stage == "dpo").commands[0])
    assert "-m dpo.train" in dpo and dpo.endswith("--beta 0.2")
    round2 = {s.stage: s for s in steps if s.round == 2}
    candidates = " ".join(round2["candidates"].commands[0])
    assert f"--model_name_or_path {tmp_path}/r/ppo/model" in candidates  # round 2 samples from round 1's policy
    assert f"--model_name_or_path {tmp_path}/r/sft/model" in " ".join(round2["ppo"].commands[0])
    assert all("--db" in " ".join(c) for s in steps if s.stage in ("labeling", "export") for c in s.commands)


def test_active_selection_plans_priorities_from_the_last_rounds_ensemble_and_a_budget(tmp_path):
    rm = {"config": "configs/rm.yaml", "args": ["--ensemble", "3"]}
    config = PipelineConfig(
        run="r",
        runs_dir=str(tmp_path),
        rounds=2,
        selection="active",
        labels_per_round=50,
        stages={"rm": rm},
        labeling="simulated",
        rubric="pipeline.demo.rubric:house_style_score",
    )
    labeling = {s.round: [" ".join(c) for c in s.commands] for s in plan(config) if s.stage == "labeling"}
    select, imports, simulate = labeling[1]
    assert "-m reward.select --run r " in select and "--by random --seed 1" in select  # round 1: no ensemble yet
    assert f"--file {tmp_path}/r/selection/candidates.jsonl" in imports
    assert simulate.endswith("--until-rankings 50")
    select, imports, simulate = labeling[2]
    assert f"--candidates {tmp_path}/r/round2/candidates/candidates.jsonl --round 2" in select
    assert f"--by disagreement --reward_models {tmp_path}/r/rm" in select  # round 1's ensemble
    assert f"--file {tmp_path}/r/round2/selection/candidates.jsonl" in imports
    assert simulate.endswith("--until-rankings 100")  # the budget adds up over the rounds
    step = next(s for s in plan(config) if s.stage == "labeling" and s.round == 2)
    assert upstream_of(config, step) == [("candidates", 2), ("rm", 1)]  # a retrained ensemble re-selects

    by_default = plan(PipelineConfig(run="r", runs_dir=str(tmp_path), rounds=2))
    first = next(s for s in by_default if s.stage == "labeling")
    assert "import-candidates" in first.commands[0] and "--until-rankings" not in " ".join(first.commands[-1])


def test_active_selection_without_a_previous_round_or_an_ensemble_is_refused():
    with pytest.raises(ValueError, match="needs rounds: 2 or more .* rounds is 1"):
        PipelineConfig(selection="active", stages={"rm": {"args": ["--ensemble", "3"]}})
    with pytest.raises(ValueError, match=r"the rm stage trains 1 model .* Set `ensemble: 3` in configs/rm.yaml"):
        PipelineConfig(selection="active", rounds=2, stages={"rm": {"config": "configs/rm.yaml"}})
    with pytest.raises(ValueError, match="selection must be 'random' or 'active'"):
        PipelineConfig(selection="smart")
    with pytest.raises(ValueError, match="labels_per_round must be at least 1"):
        PipelineConfig(labels_per_round=0)
    with pytest.raises(ValueError, match="labels_per_round or min_rankings, not both"):
        PipelineConfig(labels_per_round=10, min_rankings=10)
    config = PipelineConfig(selection="active", rounds=2, stages={"rm": {"args": ["--ensemble=2"]}})
    assert config.selection == "active"


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
    with pytest.raises(ValueError, match=r"stages: unknown \['dop'\]"):
        PipelineConfig(stages={"dop": {}})
    path = tmp_path / "p.yaml"
    path.write_text("run: x\nroundz: 2\n")
    with pytest.raises(ValueError, match="unknown settings"):
        PipelineConfig.from_yaml(path)


def assert_gold_figures_come_from_the_team_rubric(tmp_path: Path, run_dir: Path, report: str) -> None:
    """The rubric named once in the pipeline config reached every stage that scores, and no other rubric did."""
    calls = (tmp_path / "rubric_calls.txt").read_text()
    for caller in ("import-candidates", "simulate", "reward/train.py", "ppo/train.py", "evaluation/evaluate.py"):
        assert caller in calls, caller
    rm = json.loads((run_dir / "rm" / "summary.json").read_text())["metrics"]
    assert rm["gold_rubric"] == "team_rubric:score" and rm["eval_gold_pairs"] > 0
    assert 0 <= rm["eval_gold_accuracy"] <= 1
    ppo = json.loads((run_dir / "ppo" / "summary.json").read_text())["metrics"]
    assert ppo["gold_rubric"] == "team_rubric:score"
    assert ppo["gold_score_first"] >= 10 and ppo["gold_score_last"] >= 10  # the demo rubric scores in [0, 1]
    evaluation = json.loads((run_dir / "eval" / "summary.json").read_text())["metrics"]
    assert evaluation["sft"]["gold_score"] >= 10 and evaluation["ppo"]["gold_score"] >= 10
    for row in read_jsonl(run_dir / "eval" / "samples.jsonl"):
        for policy in ("sft", "ppo"):
            assert row[policy]["gold"] == pytest.approx(team_rubric("", row[policy]["response"]))
    assert "by the rubric `team_rubric:score`" in report


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips_and_reruns_only_what_changed(
    tmp_path, micro_model, small_sft_data, demo_dir
):
    config = pipeline_config(tmp_path, micro_model, small_sft_data, demo_dir)
    first = run_pipeline(config)
    assert set(statuses(first.stdout).values()) == {"ran"}, first.stdout[-3000:]
    run_dir = tmp_path / "runs" / "t"
    for stage in ("sft", "candidates", "export", "rm", "ppo", "dpo", "eval"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["metrics"], stage
        # The line the stage printed is kept, and the conductor's table shows that very line.
        assert summary["headline"] and summary["headline"] in first.stdout.rsplit("\nstage", 1)[-1], stage
    assert json.loads((run_dir / "export" / "summary.json").read_text())["metrics"]["pairs"] > 0
    report = (run_dir / "report.md").read_text()
    for section in ("## SFT", "## Reward model", "## PPO", "SFT against PPO", "Sample responses"):
        assert section in report
    assert "| ensemble of 2 (mean score) |" in report and "### PPO against best-of-n (and DPO, when trained)" in report
    assert (run_dir / "report_t_members.png").exists() and (run_dir / "report_t_kl_frontier.png").exists()
    ppo_inputs = json.loads((run_dir / "ppo" / "summary.json").read_text())["inputs"]
    assert {"reward_model_0", "reward_model_1"} <= ppo_inputs.keys()
    assert "| DPO |" in report  # the evaluation put the DPO policy beside PPO and best-of-n
    assert (run_dir / "report.html").exists() and (run_dir / "report_sft_loss.png").exists()
    assert_gold_figures_come_from_the_team_rubric(tmp_path, run_dir, report)

    second = run_pipeline(config)
    assert set(statuses(second.stdout).values()) == {"skipped"}, second.stdout[-3000:]

    changed = pipeline_config(tmp_path, micro_model, small_sft_data, demo_dir, ppo_lr="5e-4")
    third = run_pipeline(changed)
    assert statuses(third.stdout) == {
        **dict.fromkeys(["sft", "candidates", "labeling", "export", "rm", "dpo"], "skipped"),
        "ppo": "ran",
        "eval": "ran",
    }, third.stdout[-3000:]


@pytest.mark.slow
def test_a_failing_stage_keeps_earlier_outputs_and_says_how_to_go_on(tmp_path, micro_model, small_sft_data, demo_dir):
    config = pipeline_config(tmp_path, micro_model, small_sft_data, demo_dir)
    raw = yaml.safe_load(config.read_text())
    raw["stages"]["candidates"]["args"] += ["--k", "0"]
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=REPO,
        env=pipeline_env(config),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "candidates failed" in proc.stdout and "finished stages are skipped" in proc.stdout
    assert (tmp_path / "runs" / "t" / "sft" / "model").exists()
    assert (tmp_path / "runs" / "t" / "sft" / "pipeline.json").exists()


@pytest.mark.slow
def test_two_rounds_with_active_selection_label_the_disputed_items_within_the_budget(
    tmp_path, micro_model, small_sft_data, demo_dir
):
    config = pipeline_config(tmp_path, micro_model, small_sft_data, demo_dir, rounds=2)
    raw = yaml.safe_load(config.read_text())
    del raw["stages"]["dpo"]
    raw |= {"selection": "active", "labels_per_round": 10, "gold_share": 0.0}
    config.write_text(yaml.safe_dump(raw))
    first = run_pipeline(config)
    assert set(statuses(first.stdout).values()) == {"ran"}, first.stdout[-3000:]

    run_dir = tmp_path / "runs" / "t"
    round1 = json.loads((run_dir / "selection" / "summary.json").read_text())["metrics"]
    round2 = json.loads((run_dir / "round2" / "selection" / "summary.json").read_text())["metrics"]
    assert (round1["by"], round1["members"]) == ("random", 0)
    assert (round2["by"], round2["members"], round2["items"]) == ("disagreement", 2, 16)  # round 1's ensemble
    store = LabelStore(f"sqlite:///{run_dir / 'labeling' / 'labels.db'}")
    try:
        assert store.labeling_progress().rankings == 20  # 10 per round, exactly
        ranked = {r["item_id"] for r in store.all_current_rankings()}
        with store.engine.connect() as connection:
            items = connection.execute(sa.text("SELECT id, priority FROM items WHERE priority >= 1")).all()
    finally:
        store.close()
    assert len(items) == 16  # round 2's new items
    top = {item_id for item_id, _ in sorted(items, key=lambda i: -i[1])[:10]}
    assert {item_id for item_id, _ in items} & ranked == top  # round 2's budget went to its most disputed items
    report = (run_dir / "report.md").read_text()
    assert "most disputed" in report and "round 2" in report
