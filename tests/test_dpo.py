"""The DPO stage on the micro model: it trains on the export's pairs and saves a plain policy, refuses an export
without pairs before any model loads, and ``make eval`` puts the DPO policy beside PPO and best-of-n."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline.lib.errors import DataError
from tests.conftest import REPO
from tests.test_ppo import RUBRIC, make_ppo_run
from tests.test_reward import write_export


@pytest.fixture
def dpo_run(tmp_path, micro_model, demo_dir) -> Path:
    """A run with an 'SFT model' (the micro base), an export of simulated rankings, a reward model and a PPO policy
    (the SFT model again: the evaluation only needs one to load)."""
    root = make_ppo_run(tmp_path, micro_model)
    write_export(root / "t" / "export", demo_dir, n_prompts=24)
    shutil.copytree(root / "t" / "sft" / "model", root / "t" / "ppo" / "model")
    return root


def run_dpo(runs_dir: Path, *extra: str) -> dict:
    from dpo.train import DPOStageConfig, main
    from pipeline.lib.stage import parse

    args = ["--config", str(REPO / "configs" / "dpo.yaml"), "--run", "t", "--runs_dir", str(runs_dir)]
    args += ["--max_steps", "6", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3"]
    args += ["--logging_steps", "2", "--save_steps", "3", "--max_length", "256", "--report_to", "none", *extra]
    return main(*parse(DPOStageConfig, "dpo", args))


def test_dpo_trains_on_the_exported_pairs_and_saves_a_plain_policy(dpo_run):
    m = run_dpo(dpo_run)["metrics"]
    pairs = sum(1 for _ in open(dpo_run / "t" / "export" / "preferences.jsonl"))
    assert m["data"]["pairs"] == pairs and m["global_step"] == 6 and m["beta"] == 0.1
    assert m["rewards_accuracy_last"] is not None and m["train_loss"] > 0
    model_dir = dpo_run / "t" / "dpo" / "model"
    AutoModelForCausalLM.from_pretrained(model_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    before = load_file(dpo_run / "t" / "sft" / "model" / "model.safetensors")[name]
    assert not torch.equal(load_file(model_dir / "model.safetensors")[name], before)

    # make eval on the run: DPO beside PPO and best-of-n.
    from evaluation.evaluate import EvalConfig
    from evaluation.evaluate import main as evaluate

    config = EvalConfig(
        run="t",
        runs_dir=str(dpo_run),
        prompts=str(dpo_run / "eval_prompts.jsonl"),
        rubric=RUBRIC,
        num_prompts=4,
        max_new_tokens=8,
        best_of_n=[1, 2],
        best_of_n_prompts=2,
        report_to="none",
    )
    e = evaluate(config)
    assert {"reward_mean", "gold_score", "kl_to_reference"} <= e["metrics"]["dpo"].keys()
    assert 0 <= e["metrics"]["gold_win_rate_dpo_vs_sft"] <= 1 and e["inputs"]["dpo_model"]["path"].endswith("model")
    assert "DPO (`make dpo`)" in (dpo_run / "t" / "eval" / "report.md").read_text()


def test_an_export_without_pairs_is_refused_before_training(dpo_run):
    prefs = dpo_run / "t" / "export" / "preferences.jsonl"
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    prefs.write_text("".join(json.dumps({**r, "rejected": r["chosen"]}) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"no preference pair to learn from.*make export"):
        run_dpo(dpo_run)
    assert not (dpo_run / "t" / "dpo" / "model").exists()
    prefs.write_text(json.dumps({"prompt": "hi", "responses": ["a", "b"], "ranks": [1, 2]}) + "\n")
    with pytest.raises(DataError, match="DPO trains on preference pairs with columns prompt, chosen, rejected"):
        run_dpo(dpo_run)
