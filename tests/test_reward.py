"""The reward-model stage: its evaluation functions, then end to end on the micro model (pairwise, K-way, LoRA,
resume, Anthropic HH-RLHF data from the command line, 2 processes under DeepSpeed ZeRO-2) and its errors."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.lib import launch
from pipeline.lib.models import tokenizer_differences
from reward import evaluate as rm_eval
from reward.training_data import split_by_group
from tests.conftest import REPO, read_jsonl
from tests.wandb_records import find_run_file, history_keys

# ---------------------------------------------------------------------------------------------------------------
# Evaluation functions


def test_split_is_by_prompt_never_by_pair():
    rng = random.Random(0)
    group_ids = [f"prompt-{rng.randrange(50)}" for _ in range(600)]  # 600 pairs of 50 prompts
    train, held_out = split_by_group(group_ids, eval_fraction=0.2, seed=0)
    assert not train & held_out
    assert train | held_out == set(group_ids)
    assert len(held_out) == round(0.2 * len(set(group_ids)))
    # The same groups for any row order; another seed holds out other prompts.
    assert split_by_group(sorted(group_ids), 0.2, seed=0) == (train, held_out)
    assert split_by_group(group_ids, 0.2, seed=1)[1] != held_out
    # Always one group on each side.
    assert [len(side) for side in split_by_group(["a", "b"], 0.01)] == [1, 1]
    assert [len(side) for side in split_by_group(["a", "b"], 0.99)] == [1, 1]
    with pytest.raises(ValueError, match="at least 2 distinct prompts"):
        split_by_group(["a", "a"], 0.1)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_expected_calibration_error_hand_worked():
    # P(chosen wins) = sigmoid(r_chosen - r_rejected) of four pairs: 0.95, 0.95, 0.05 (a confident mistake), 0.65.
    diffs = [logit(0.95), logit(0.95), logit(0.05), logit(0.65)]
    # Confidences 0.95, 0.95, 0.95 (bin 0.9-1.0, 2 of 3 right) and 0.65 (bin 0.6-0.7, right):
    # ECE = 3/4 * |2/3 - 0.95| + 1/4 * |1 - 0.65| = 0.2125 + 0.0875 = 0.3.
    assert rm_eval.expected_calibration_error(diffs, np.zeros(4)) == pytest.approx(0.3, abs=1e-9)
    # Perfect calibration: 4 pairs at 75% confidence, 3 right.
    diffs = [logit(0.75)] * 3 + [logit(0.25)]
    assert rm_eval.expected_calibration_error(diffs, np.zeros(4)) == pytest.approx(0.0, abs=1e-9)


def test_accuracy_by_gap_and_gold_agreement_hand_worked():
    r_chosen, r_rejected = [1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0]
    assert rm_eval.pairwise_accuracy(r_chosen, r_rejected) == 0.5  # a tie counts as wrong
    assert rm_eval.accuracy_by_gap(r_chosen, r_rejected, [1, 1, 2, 3]) == {
        "1": {"accuracy": 0.5, "pairs": 2},
        "2": {"accuracy": 1.0, "pairs": 1},
        "3": {"accuracy": 0.0, "pairs": 1},
    }
    # Gold scores: pair 1 agrees, pair 2 the gold ties (skipped), pair 3 the gold reverses, pair 4 the RM ties.
    gold = rm_eval.gold_agreement(r_chosen, r_rejected, [0.9, 0.5, 0.1, 0.8], [0.2, 0.5, 0.7, 0.1])
    assert gold == {"agreement": pytest.approx(1 / 3), "pairs": 3, "gold_ties": 1}
    assert rm_eval.reward_stats([1.0, 3.0]) == {"mean": 2.0, "std": 1.0}


# ---------------------------------------------------------------------------------------------------------------
# A labeled export as labeling_ui writes it, from demo prompts


def write_export(export_dir: Path, demo_dir: Path, n_prompts: int, k: int = 4, seed: int = 0) -> None:
    """K replies per demo prompt in distinct demo styles, ranked by two simulated labelers (gold rubric + noise)."""
    from pipeline.demo import data as demo
    from pipeline.demo.rubric import house_style_score
    from pipeline.lib.pairs import ranking_to_pairs

    rng = random.Random(seed)
    export_dir.mkdir(parents=True)
    preferences, rankings = [], []
    for row in read_jsonl(demo_dir / "prompts.jsonl")[:n_prompts]:
        responses = demo.replies_in_styles(row, k, rng)
        gold = [house_style_score(row["prompt"][0]["content"], response) for response in responses]
        for labeler in ("sim-a", "sim-b"):
            noisy = [round(g + rng.gauss(0, 0.05), 1) for g in gold]
            ranks = [sorted(set(noisy), reverse=True).index(x) + 1 for x in noisy]  # dense, 1 = best
            rankings.append(
                {
                    "group_id": row["id"],
                    "item_id": f"{row['id']}-1",
                    "prompt": row["prompt"],
                    "responses": responses,
                    "ranks": ranks,
                    "labeler": labeler,
                    "simulated": True,
                    "is_gold": False,
                }
            )
            for chosen, rejected, gap in ranking_to_pairs(responses, ranks):
                preferences.append(
                    {
                        "prompt": row["prompt"],
                        "chosen": [{"role": "assistant", "content": responses[chosen]}],
                        "rejected": [{"role": "assistant", "content": responses[rejected]}],
                        "group_id": row["id"],
                        "item_id": f"{row['id']}-1",
                        "rank_gap": gap,
                        "labeler": labeler,
                    }
                )
    for name, rows in (("preferences.jsonl", preferences), ("rankings.jsonl", rankings)):
        (export_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"stage": "export", "metrics": {"pairs": len(preferences), "all_simulated": True}}
    (export_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, demo_dir) -> Path:
    out = tmp_path_factory.mktemp("export") / "export"
    write_export(out, demo_dir, n_prompts=40)
    return out


@pytest.fixture
def rm_run(tmp_path, micro_model, export_dir) -> Path:
    """A run folder with an 'SFT model' (the micro base model) and the export above."""
    shutil.copytree(micro_model, tmp_path / "t" / "sft" / "model")
    shutil.copytree(export_dir, tmp_path / "t" / "export")
    return tmp_path


RUBRIC = "pipeline.demo.rubric:house_style_score"


def rm_args(runs_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / "rm.yaml"),
        "--run",
        "t",
        "--runs_dir",
        str(runs_dir),
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "32",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "5",
        "--save_steps",
        "20",
        "--eval_fraction",
        "0.2",
        "--report_to",
        "none",
        "--seed",
        "0",
        *extra,
    ]


def run_rm(args: list[str]) -> dict:
    from pipeline.lib.stage import parse
    from reward.config import RMStageConfig
    from reward.train import main

    return main(*parse(RMStageConfig, "rm", args))


def changed(model_dir: Path, sft_dir: Path, name: str = "model.layers.0.self_attn.q_proj.weight") -> bool:
    return not torch.equal(
        load_file(model_dir / "model.safetensors")[name], load_file(sft_dir / "model.safetensors")[name]
    )


def assert_loads_as_reward_model(rm_run: Path) -> None:
    model_dir, sft_dir = rm_run / "t" / "rm" / "model", rm_run / "t" / "sft" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 1 and model.score.weight.shape[0] == 1
    assert model.config.pad_token_id == 0
    assert changed(model_dir, sft_dir)
    # The policy's tokenizer, unchanged: the same files, byte for byte.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (model_dir / name).read_bytes() == (sft_dir / name).read_bytes(), name
    assert not tokenizer_differences(AutoTokenizer.from_pretrained(sft_dir), AutoTokenizer.from_pretrained(model_dir))


# ---------------------------------------------------------------------------------------------------------------
# End to end


def test_pairwise_end_to_end_learns_and_logs(rm_run):
    summary = run_rm(
        rm_args(rm_run, "--loss", "pairwise", "--num_train_epochs", "1", "--report_to", "wandb", "--rubric", RUBRIC)
    )
    stage = rm_run / "t" / "rm"
    on_disk = json.loads((stage / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    m = on_disk["metrics"]
    assert m["loss"] == "pairwise" and m["num_eval_prompts"] == 8 and m["num_train_prompts"] == 32
    assert m["data"]["format"] == "explicit" and m["data"]["dropped"] == {"too_long": 0}
    # Learned something: held-out chosen responses score above rejected ones, and above chance.
    assert m["eval_accuracy"] > 0.6 and m["eval_reward_margin"] > 0
    assert 0 <= m["eval_ece"] <= 1 and set(m["accuracy_by_gap"]) <= {"1", "2", "3"}
    # Labels ranked by the demo's rubric (with noise), judged against it: the rubric the config names.
    assert m["gold_rubric"] == RUBRIC
    assert 0 <= m["eval_gold_accuracy"] <= 1 and m["eval_gold_pairs"] > 0
    assert m["eval_label_gold_agreement"] > 0.8
    assert set(m["timing"]) == {"load_s", "train_s", "save_s", "score_s"}

    stats = json.loads((stage / "reward_stats.json").read_text())
    assert stats == {"mean": m["reward_mean"], "std": m["reward_std"]} and stats["std"] > 0
    assert (stage / "reward_histogram.png").read_bytes()[:4] == b"\x89PNG"
    assert_loads_as_reward_model(rm_run)

    keys = history_keys(find_run_file(stage / "wandb"))
    assert {"train/loss", "train/accuracy", "train/margin"} <= keys
    assert "eval/reward_histogram/_type" in keys  # the chosen/rejected rewards, as a table W&B plots


def test_kway_end_to_end_trains_on_whole_rankings(rm_run):
    summary = run_rm(
        rm_args(
            rm_run,
            *("--loss", "kway", "--per_device_train_batch_size", "4", "--margin_from_rank_gap", "true"),
            *("--rubric", RUBRIC),
        )
    )
    m = summary["metrics"]
    assert m["loss"] == "kway" and m["data"]["format"] == "rankings"
    # One example per prompt: both labelers' rankings of its responses share one forward pass of each response.
    assert m["num_train_examples"] == 32 and m["data"]["rows_out"] == 2 * 40
    # The held-out figures are on the held-out rankings' pairs: the pairs the pairwise loss is evaluated on.
    rankings = read_jsonl(rm_run / "t" / "export" / "rankings.jsonl")
    _, held_out = split_by_group([r["group_id"] for r in rankings], eval_fraction=0.2, seed=0)
    export_pairs = read_jsonl(rm_run / "t" / "export" / "preferences.jsonl")
    assert m["eval_pairs"] == sum(p["group_id"] in held_out for p in export_pairs)
    assert m["eval_accuracy"] > 0.6 and m["eval_gold_accuracy"] is not None
    assert json.loads((rm_run / "t" / "rm" / "reward_stats.json").read_text())["std"] > 0
    assert_loads_as_reward_model(rm_run)


def test_kway_ties_end_to_end_models_the_tied_pairs(rm_run):
    rankings = read_jsonl(rm_run / "t" / "export" / "rankings.jsonl")
    rankings[0]["ranks"] = [1] * len(rankings[0]["ranks"])  # all tied: kept by kway_ties (kway drops it)
    rankings[1]["ranks"] = [1, 1, 2, 2][: len(rankings[1]["ranks"])]
    (rm_run / "t" / "export" / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rankings))
    summary = run_rm(rm_args(rm_run, "--loss", "kway_ties", "--per_device_train_batch_size", "4", "--rubric", RUBRIC))
    m = summary["metrics"]
    assert m["loss"] == "kway_ties" and m["data"]["dropped"].get("all_tied", 0) == 0
    assert m["data"]["tied_pairs"] >= 2  # at least the two rankings above, unless held out
    assert m["eval_accuracy"] > 0.6 and m["eval_gold_accuracy"] is not None
    assert_loads_as_reward_model(rm_run)
    with pytest.raises(ValueError, match="tie_threshold must be > 0"):
        run_rm(rm_args(rm_run, "--loss", "kway_ties", "--tie_threshold", "0"))


def test_bootstrap_draws_as_many_prompts_as_there_are_with_replacement_and_the_seed_decides():
    from reward.ensemble import bootstrap_counts

    groups = [f"p{i}" for i in range(50) for _ in range(3)]  # 50 prompts, 3 examples each
    counts = bootstrap_counts(groups, seed=1)
    assert sum(counts.values()) == 50 and set(counts) <= set(groups)
    assert 20 <= len(counts) <= 45  # about 63% of the prompts drawn at least once, some several times
    assert counts == bootstrap_counts(list(reversed(groups)), seed=1)  # the order of the rows does not matter
    assert counts != bootstrap_counts(groups, seed=2)


def test_ensemble_disagreement_and_mean_hand_worked():
    from reward.ensemble import disagreement, mean_scores

    assert mean_scores([{(1,): 1.0, (2,): 0.0}, {(1,): 3.0, (2,): -2.0}]) == {(1,): 2.0, (2,): -1.0}
    # Two members, three pairs. Margins (1, 3), (2, 2), (-1, 0.5): stds 1, 0, 0.75 (ddof 0); the ensemble's mean
    # margins 2, 2, -0.25 order the first two right and the third wrong.
    figures = disagreement(np.array([[1.0, 2.0, -1.0], [3.0, 2.0, 0.5]]))
    assert figures == pytest.approx(
        {"eval_disagreement": 1.75 / 3, "eval_disagreement_right": 0.5, "eval_disagreement_wrong": 0.75}
    )
    assert disagreement(np.array([[1.0], [2.0]]))["eval_disagreement_wrong"] is None


def test_an_ensemble_trains_members_on_bootstraps_reports_each_and_resumes_the_missing_one(rm_run):
    from pipeline.lib.runs import reward_models

    args = rm_args(rm_run, "--ensemble", "2", "--loss", "kway", "--per_device_train_batch_size", "4")
    m = run_rm([*args, "--rubric", RUBRIC])["metrics"]
    stage = rm_run / "t" / "rm"
    members = [stage / "members" / str(i) / "model" for i in range(2)]
    assert reward_models("t", rm_run) == members  # what PPO and the evaluation read
    assert json.loads((stage / "ensemble.json").read_text())["members"] == ["members/0/model", "members/1/model"]
    weights = [load_file(d / "model.safetensors")["score.weight"] for d in members]
    assert not torch.equal(weights[0], weights[1])  # other seeds, other bootstraps
    assert [x["seed"] for x in m["members"]] == [0, 1] and m["ensemble"] == 2
    for member in m["members"]:
        assert member["eval_accuracy"] > 0.5 and member["eval_gold_accuracy"] is not None
        assert member["prompts_drawn"] < m["num_train_prompts"]  # a bootstrap leaves some prompts out
        assert json.loads((stage / "members" / str(member["member"]) / "reward_stats.json").read_text())["std"] > 0
    assert m["eval_accuracy"] > 0.6 and m["eval_disagreement"] > 0
    assert {"eval_disagreement_right", "eval_disagreement_wrong", "eval_ece"} <= m.keys()

    # A kill after member 0 was saved: resuming keeps it and trains member 1 again.
    shutil.rmtree(stage / "members" / "1")
    before = (members[0] / "model.safetensors").stat().st_mtime_ns
    again = run_rm([*args, "--resume", "true"])["metrics"]
    assert (members[0] / "model.safetensors").stat().st_mtime_ns == before
    assert (members[1] / "model.safetensors").exists() and again["members"][1]["seed"] == 1
    # Back to one model: the ensemble's list goes, so nothing reads stale members.
    run_rm(rm_args(rm_run, "--loss", "kway", "--per_device_train_batch_size", "4", "--max_steps", "2"))
    assert reward_models("t", rm_run) == [stage / "model"]


def test_lora_trains_the_head_in_full_and_saves_a_merged_model(rm_run):
    run_rm(rm_args(rm_run, "--use_lora", "true", "--lora_r", "4", "--max_steps", "6"))
    stage = rm_run / "t" / "rm"
    assert (stage / "adapter" / "adapter_config.json").exists()
    weights = load_file(stage / "model" / "model.safetensors")
    assert not any("lora" in key or "modules_to_save" in key for key in weights)
    assert "score.weight" in weights
    assert_loads_as_reward_model(rm_run)


def test_resume_continues_from_the_saved_step(rm_run):
    """An interrupted run resumed from its checkpoint ends where an uninterrupted one ends, with the same weights."""
    args = rm_args(rm_run, "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "3")
    run_rm(args)
    stage = rm_run / "t" / "rm"
    uninterrupted = load_file(stage / "model" / "model.safetensors")

    # A crash after the step-3 checkpoint: the step-6 checkpoint and the final model never got written.
    shutil.rmtree(stage / "checkpoints" / "checkpoint-6")
    shutil.rmtree(stage / "model")
    summary = run_rm([*args, "--resume", "true"])

    assert summary["metrics"]["global_step"] == 6
    resumed = load_file(stage / "model" / "model.safetensors")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-5)
    from pipeline.lib.errors import ResumeError

    with pytest.raises(ResumeError, match="no checkpoint .* Run without RESUME=1"):
        shutil.rmtree(stage / "checkpoints")
        run_rm([*args, "--resume", "true"])


HH_ROWS = [
    ("My {item} arrived broken.", "I'm sorry! A replacement {item} ships today.", "Not our problem."),
    ("Can I return the {item}?", "Of course, here is a return label for the {item}.", "No."),
    ("Is the {item} dishwasher safe?", "Yes, though hand-washing keeps the {item} glaze bright.", "Maybe?"),
]


def test_hh_rlhf_file_from_the_command_line(tmp_path, micro_model):
    """`python -m reward.train` on a small Anthropic HH-RLHF file: runs, holds out prompts, reports accuracy."""
    rows = []
    for i, item in enumerate(["mug", "bowl", "vase", "plate", "jug", "teapot", "cup", "dish"]):
        for question, good, bad in HH_ROWS:
            context = f"\n\nHuman: Hello, order {i}.\n\nAssistant: Hi! How can I help?\n\nHuman: {question}"
            rows.append(
                {
                    "chosen": f"{context}\n\nAssistant: {good}".format(item=item),
                    "rejected": f"{context}\n\nAssistant: {bad}".format(item=item),
                }
            )
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    cmd = [
        sys.executable,
        "-m",
        "reward.train",
        *rm_args(
            tmp_path,
            "--model_name_or_path",
            micro_model,
            "--preferences",
            str(data),
            "--loss",
            "pairwise",
            "--max_steps",
            "4",
        ),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert re.search(r"\[rm\] done in .* held-out accuracy \d+\.\d% on \d+ pairs", proc.stdout)
    m = json.loads((tmp_path / "t" / "rm" / "summary.json").read_text())["metrics"]
    assert m["data"]["format"] == "hh-rlhf" and m["eval_pairs"] > 0
    assert m["eval_gold_accuracy"] is None and m["gold_rubric"] is None  # no rubric named: no gold figures


def test_missing_inputs_name_the_stage_to_run_first(tmp_path, micro_model, export_dir):
    from pipeline.lib.errors import MissingInputError

    with pytest.raises(MissingInputError, match=r"make sft RUN=t"):
        run_rm(rm_args(tmp_path))
    shutil.copytree(micro_model, tmp_path / "t" / "sft" / "model")
    with pytest.raises(MissingInputError, match=r"make export RUN=t"):
        run_rm(rm_args(tmp_path))
    (tmp_path / "prefs").mkdir()
    shutil.copy(export_dir / "preferences.jsonl", tmp_path / "prefs")
    with pytest.raises(MissingInputError, match="loss kway trains on whole rankings"):
        run_rm(rm_args(tmp_path, "--loss", "kway", "--preferences", str(tmp_path / "prefs")))


def test_config_checks():
    from reward.config import RMStageConfig

    with pytest.raises(ValueError, match="loss must be one of pairwise, kway, kway_ties"):
        RMStageConfig(loss="listwise", bf16=False)
    with pytest.raises(ValueError, match="eval_fraction must be between 0 and 1"):
        RMStageConfig(eval_fraction=0.0, bf16=False)


@pytest.mark.slow
def test_two_processes_under_deepspeed_zero2_train_an_ensemble(rm_run):
    """Real `accelerate launch` with 2 processes and DeepSpeed ZeRO-2 on the CPU (the shipped K-way loss): an
    ensemble of 2, its members trained one after another by both processes."""
    cmd = [*launch.command("reward.train", nproc=2, zero=2), *rm_args(rm_run, "--max_steps", "4", "--ensemble", "2")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    stage = rm_run / "t" / "rm"
    summary = json.loads((stage / "summary.json").read_text())
    assert [m["global_step"] for m in summary["metrics"]["members"]] == [4, 4]
    assert proc.stdout.count("[rm] done") == 1  # only the main process evaluates and writes
    assert json.loads((stage / "ensemble.json").read_text())["members"] == ["members/0/model", "members/1/model"]
    weights = [
        AutoModelForSequenceClassification.from_pretrained(stage / "members" / str(i) / "model") for i in (0, 1)
    ]
    assert not torch.equal(weights[0].score.weight, weights[1].score.weight)  # two models, not one saved twice
