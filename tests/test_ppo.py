"""The PPO stage on micro models: one process, 2 processes under ZeRO-2 and ZeRO-3, LoRA, resume, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import REPO, read_jsonl
from tests.wandb_records import find_run_file, history_keys


@pytest.fixture
def ppo_run(tmp_path, micro_model) -> Path:
    """A run folder with an 'SFT model' (the micro base) and a 'reward model' (the same, with a scalar head)."""
    shutil.copytree(micro_model, tmp_path / "t" / "sft" / "model")
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(micro_model, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(tmp_path / "t" / "rm" / "model")
    tokenizer.save_pretrained(tmp_path / "t" / "rm" / "model")
    (tmp_path / "t" / "rm" / "reward_stats.json").write_text(json.dumps({"mean": 0.1, "std": 2.0}))
    return tmp_path


def ppo_args(runs_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "ppo.yaml"), "--run", "t", "--runs_dir", str(runs_dir),
        "--total_episodes", "32", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--response_length", "12", "--num_prompts", "40", "--eval_prompts", "8", "--num_sample_generations", "0",
        "--local_rollout_forward_batch_size", "8", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
        "--checkpoint_steps", "2", "--report_to", "none", *extra,
    ]  # fmt: skip


def run_ppo(args: list[str]) -> dict:
    from trl import TrlParser

    from ppo.train import PPOStageConfig, main

    (config,) = TrlParser((PPOStageConfig,)).parse_args_and_config(args)
    return main(config)


def changed(model_dir: Path, base_dir: Path, name: str = "model.layers.0.self_attn.q_proj.weight") -> bool:
    return not torch.equal(
        load_file(model_dir / "model.safetensors")[name], load_file(base_dir / "model.safetensors")[name]
    )


def test_ppo_trains_logs_and_saves_a_plain_model(ppo_run):
    summary = run_ppo(ppo_args(ppo_run, "--report_to", "wandb", "--adaptive_kl", "true", "--length_penalty", "0.01"))
    stage = ppo_run / "t" / "ppo"
    metrics = summary["metrics"]
    assert metrics["global_step"] == 4 and metrics["episodes"] == 32
    for key in ("timing_generation_s_mean", "timing_scoring_s_mean", "timing_optimisation_s_mean", "kl_last",
                "gold_score_last", "eos_rate_last", "response_length_last"):  # fmt: skip
        assert key in metrics, key
    assert metrics["reward_normalisation"] == {"mean": 0.1, "std": 2.0}
    # The adaptive controller moved the coefficient away from its start.
    assert metrics["final_kl_coef"] != pytest.approx(0.05, abs=1e-12)

    history = read_jsonl(stage / "history.jsonl")
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(h["timing/generation_s"] > 0 and h["timing/scoring_s"] > 0 for h in history)
    # The shaped score is the normalised raw score minus the length penalty, (raw - 0.1) / 2 - 0.01 * length, minus
    # TRL's missing_eos_penalty (1.0 in configs/ppo.yaml) for the responses that never ended.
    for h in history:
        expected = (h["rollout/raw_score"] - 0.1) / 2.0 - 0.01 * h["rollout/response_length"]
        expected -= 1.0 * (1 - h["rollout/eos_rate"])
        assert h["objective/scores"] == pytest.approx(expected, abs=1e-4)

    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    assert model.config.model_type == "llama"
    assert changed(stage / "model", ppo_run / "t" / "sft" / "model")
    # The Trainer's W&B callback prefixes training metrics with "train/".
    keys = history_keys(find_run_file(stage / "wandb"))
    wanted = ["objective/kl", "objective/scores", "objective/kl_coef", "timing/generation_s", "timing/scoring_s",
              "timing/optimisation_s", "rollout/eos_rate", "rollout/response_length", "rollout/gold_score"]  # fmt: skip
    assert {f"train/{key}" for key in wanted} <= keys

    # make eval on the outputs: SFT against PPO on held-out prompts.
    from ppo.evaluate import EvalConfig
    from ppo.evaluate import main as evaluate

    result = evaluate(EvalConfig(run="t", runs_dir=str(ppo_run), num_prompts=4, max_new_tokens=8, report_to="none"))
    m = result["metrics"]
    assert m["num_prompts"] == 4 and 0.0 <= m["win_rate_ppo_vs_sft"] <= 1.0
    assert m["sft"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)  # the reference is the SFT model itself
    assert {"reward_mean", "gold_score", "eos_rate", "response_length"} <= set(m["ppo"])
    eval_dir = ppo_run / "t" / "eval"
    assert "PPO wins against SFT" in (eval_dir / "report.md").read_text()
    for png in ("reward_scores.png", "sft_vs_ppo.png"):
        assert (eval_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_ppo_lora_merges_and_uses_the_adapter_free_reference(ppo_run):
    metrics = run_ppo(ppo_args(ppo_run, "--use_lora", "true", "--lora_r", "4"))["metrics"]
    stage = ppo_run / "t" / "ppo"
    # The value model trains its adapters and scalar head only: r=4 on every linear layer of the micro model.
    assert 0 < metrics["value_trainable_parameters"] < 0.1 * metrics["value_parameters"]
    assert (stage / "adapter" / "adapter_config.json").exists()
    weights = load_file(stage / "model" / "model.safetensors")
    assert not any("lora" in key for key in weights)
    assert changed(stage / "model", ppo_run / "t" / "sft" / "model")
    AutoModelForCausalLM.from_pretrained(stage / "model")


def test_resume_continues_the_step_counter_and_schedule(ppo_run):
    args = ppo_args(ppo_run, "--checkpoints_to_keep", "5")
    run_ppo(args)
    stage = ppo_run / "t" / "ppo"
    uninterrupted = read_jsonl(stage / "history.jsonl")

    shutil.rmtree(stage / "checkpoints" / "checkpoint-4")  # as if it crashed after step 2's checkpoint
    summary = run_ppo([*args, "--resume", "true"])
    resumed = read_jsonl(stage / "history.jsonl")
    assert summary["metrics"]["global_step"] == 4
    assert [h["step"] for h in resumed] == [3, 4]
    assert [h["episode"] for h in resumed] == [24, 32]
    # The learning rate continues the whole run's linear schedule, not a fresh one.
    assert [h["lr"] for h in resumed] == pytest.approx([h["lr"] for h in uninterrupted[2:]])


def test_resume_without_checkpoint_says_what_to_do(ppo_run):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_ppo(ppo_args(ppo_run, "--resume", "true"))


def test_missing_reward_model_names_the_stage_to_run(ppo_run):
    shutil.rmtree(ppo_run / "t" / "rm")
    from pipeline.runs import MissingInputError

    with pytest.raises(MissingInputError, match="make rm RUN=t"):
        run_ppo(ppo_args(ppo_run))


def test_tokenizer_mismatch_stops_the_run_at_start(ppo_run):
    rm_dir = ppo_run / "t" / "rm" / "model"
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    tokenizer.save_pretrained(rm_dir)
    with pytest.raises(ValueError, match="tokenizer"):
        run_ppo(ppo_args(ppo_run))
    assert not (ppo_run / "t" / "ppo" / "model").exists()


@pytest.mark.parametrize(("zero", "lora"), [(2, False), (3, False), (2, True)])
def test_two_processes_under_deepspeed(ppo_run, zero, lora):
    extra = ["--use_lora", "true", "--lora_r", "4"] if lora else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO / "configs" / "accelerate" / f"zero{zero}.yaml"), "--num_processes", "2",
           "-m", "ppo.train", *ppo_args(ppo_run, *extra)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    stage = ppo_run / "t" / "ppo"
    summary = json.loads((stage / "summary.json").read_text())
    # 2 processes x 8 rollouts per step: 32 episodes in 2 steps.
    assert summary["metrics"]["global_step"] == 2
    AutoModelForCausalLM.from_pretrained(stage / "model")
    assert changed(stage / "model", ppo_run / "t" / "sft" / "model")
