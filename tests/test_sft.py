"""The SFT stage end to end on the micro model: full, LoRA, resume, and 2-process DeepSpeed ZeRO-2/ZeRO-3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline.lib import launch
from tests.conftest import REPO, read_jsonl
from tests.wandb_records import find_run_file, history_keys, run_info


def sft_args(runs_dir: Path, model: str, data: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--run",
        "t",
        "--runs_dir",
        str(runs_dir),
        "--model_name_or_path",
        model,
        "--dataset",
        str(data["sft_train"]),
        "--eval_dataset",
        str(data["sft_eval"]),
        "--config",
        str(REPO / "configs" / "sft.yaml"),
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--max_length",
        "256",
        "--eval_steps",
        "4",
        "--save_steps",
        "4",
        "--logging_steps",
        "2",
        "--warmup_steps",
        "0",
        "--learning_rate",
        "1e-2",
        "--lr_scheduler_type",
        "constant",
        "--num_samples",
        "2",
        "--sample_max_new_tokens",
        "16",
        "--dataloader_num_workers",
        "0",
        "--early_stopping_patience",
        "0",
        "--seed",
        "0",
        *extra,
    ]


def run_sft(args: list[str]) -> dict:
    from pipeline.lib.stage import parse
    from pipeline.sft import SFTStageConfig, main

    return main(*parse(SFTStageConfig, "sft", args))


def test_sft_end_to_end_learns_and_logs(tmp_path, micro_model, small_sft_data):
    summary = run_sft(sft_args(tmp_path, micro_model, small_sft_data, "--max_steps", "12", "--report_to", "wandb"))

    stage_dir = tmp_path / "t" / "sft"
    on_disk = json.loads((stage_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    metrics = on_disk["metrics"]
    assert metrics["global_step"] == 12
    assert metrics["eval_loss_after"] < 0.8 * metrics["eval_loss_before"]
    assert len(on_disk["inputs"]["train_data"]["sha256"]) == 64
    assert on_disk["inputs"]["base_model"]["path"] == micro_model and on_disk["wall_time_s"] > 0
    assert (stage_dir / "config.yaml").exists()

    # The saved model loads in plain transformers and differs from the base model.
    tuned = AutoModelForCausalLM.from_pretrained(stage_dir / "model")
    base = AutoModelForCausalLM.from_pretrained(micro_model)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned.state_dict()[name], base.state_dict()[name])

    samples = read_jsonl(stage_dir / "samples.jsonl")
    assert len(samples) == 2 and all(isinstance(s["completion"], str) for s in samples)

    # The W&B offline run holds the trainer's metrics, our group/job_type, and the resolved config.
    run_file = find_run_file(stage_dir / "wandb")
    keys = history_keys(run_file)
    assert {"train/loss", "eval/loss", "train/learning_rate"} <= keys
    assert "samples/_type" in keys  # a wandb.Table is stored as a reference with its type
    info = run_info(run_file)
    assert info["group"] == "t" and info["job_type"] == "sft"
    assert info["config"]["model_name_or_path"] == micro_model


def test_sft_lora_merges_into_a_plain_model(tmp_path, micro_model, small_sft_data):
    run_sft(
        sft_args(
            tmp_path,
            micro_model,
            small_sft_data,
            "--max_steps",
            "4",
            "--use_lora",
            "true",
            "--lora_r",
            "4",
            "--report_to",
            "none",
        )
    )
    model_dir = tmp_path / "t" / "sft" / "model"
    weights = load_file(model_dir / "model.safetensors")
    assert not any("lora" in key for key in weights), "the merged model must not carry adapter weights"
    assert (tmp_path / "t" / "sft" / "adapter" / "adapter_config.json").exists()
    base = load_file(Path(micro_model) / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights[name], base[name]), "merging must change the adapted weights"
    AutoModelForCausalLM.from_pretrained(model_dir)


def test_resume_continues_from_the_saved_step(tmp_path, micro_model, small_sft_data):
    """An interrupted run resumed from its checkpoint ends where an uninterrupted one ends, with the same weights."""
    args = sft_args(
        tmp_path,
        micro_model,
        small_sft_data,
        "--max_steps",
        "8",
        "--report_to",
        "none",
        "--save_total_limit",
        "3",
        "--load_best_model_at_end",
        "false",
    )
    whole = run_sft(args)["metrics"]
    stage_dir = tmp_path / "t" / "sft"
    uninterrupted = load_file(stage_dir / "model" / "model.safetensors")

    # A crash after the step-4 checkpoint: the step-8 checkpoint and the final model never got written.
    shutil.rmtree(stage_dir / "checkpoints" / "checkpoint-8")
    shutil.rmtree(stage_dir / "model")
    summary = run_sft([*args, "--resume", "true"])

    assert summary["metrics"]["global_step"] == 8
    resumed = load_file(stage_dir / "model" / "model.safetensors")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-5)
    # The summary covers the whole run, not the 4 steps since the resume, and the start model is evaluated once.
    m = summary["metrics"]
    assert m["resumed_at_steps"] == [4] and whole["resumed_at_steps"] == []
    assert m["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-3)
    assert m["eval_loss_before"] == pytest.approx(whole["eval_loss_before"])
    history = json.loads((stage_dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert sum(1 for h in history["log_history"] if "eval_loss" in h and h["step"] == 0) == 1


def test_resume_without_checkpoint_says_what_to_do(tmp_path, micro_model, small_sft_data):
    from pipeline.lib.errors import ResumeError

    with pytest.raises(ResumeError, match="no checkpoint .* Run without RESUME=1"):
        run_sft(
            sft_args(
                tmp_path, micro_model, small_sft_data, "--max_steps", "2", "--report_to", "none", "--resume", "true"
            )
        )


def test_early_stopping_needs_evaluation(tmp_path, micro_model, small_sft_data):
    with pytest.raises(ValueError, match="early_stopping_patience needs evaluation"):
        run_sft(
            sft_args(
                tmp_path,
                micro_model,
                small_sft_data,
                "--early_stopping_patience",
                "2",
                "--load_best_model_at_end",
                "false",
            )
        )


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_two_processes_under_deepspeed(tmp_path, micro_model, small_sft_data, zero):
    """Real `accelerate launch` with 2 processes and DeepSpeed ZeRO on the CPU; the saved model loads."""
    cmd = [
        *launch.command("pipeline.sft", nproc=2, zero=zero),  # the launch rules `make sft NPROC=2 ZERO=z` uses
        *sft_args(tmp_path, micro_model, small_sft_data, "--max_steps", "4", "--report_to", "none"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    summary = json.loads((tmp_path / "t" / "sft" / "summary.json").read_text())
    assert summary["metrics"]["global_step"] == 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "t" / "sft" / "model")
    base = AutoModelForCausalLM.from_pretrained(micro_model)
    name = "model.layers.1.mlp.down_proj.weight"
    assert model.state_dict()[name].shape == base.state_dict()[name].shape
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])


def test_packed_rows_keep_examples_apart(micro_model):
    """Packed rows (no FlashAttention here) give each example the logits it has alone, and its loss is TRL's."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from pipeline.sft import PackedRowsCollator

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(micro_model).eval()
    a, b, c = [torch.randint(3, 200, (n,)).tolist() for n in (7, 5, 9)]
    rows = [{"input_ids": a + b, "seq_lengths": [7, 5]}, {"input_ids": c, "seq_lengths": [9]}]
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = PackedRowsCollator(flat)(rows)

    assert batch["input_ids"].shape == (2, 12) and "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[*range(7), *range(5)], [*range(9), 0, 0, 0]]
    assert (batch["labels"][0, [0, 7]] == -100).all() and (batch["labels"][1, 9:] == -100).all()
    with torch.no_grad():  # use_cache=False as in training (SFTTrainer's compute_loss): a cache turns packing off
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for row, start, ids in ((0, 0, a), (0, 7, b), (1, 0, c)):
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(logits[row, start : start + len(ids)], alone, atol=1e-5, rtol=1e-4)
        # The same loss as TRL's flattened padding-free batch.
        flat_batch = flat(rows)
        loss, flat_loss = (model(**inputs, use_cache=False).loss.item() for inputs in (batch, flat_batch))
        assert loss == pytest.approx(flat_loss, rel=1e-5)


def test_sft_with_packing_trains(tmp_path, micro_model, small_sft_data):
    summary = run_sft(
        sft_args(
            tmp_path,
            micro_model,
            small_sft_data,
            "--max_steps",
            "6",
            "--packing",
            "true",
            "--per_device_train_batch_size",
            "2",
            "--report_to",
            "none",
        )
    )
    metrics = summary["metrics"]
    assert metrics["global_step"] == 6 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
