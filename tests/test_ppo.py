"""The PPO stage on micro models: training and its outputs, LoRA, exact resume after SIGKILL, reward models with their
own tokenizer and several at once, the invariants (accumulation, processes, ZeRO), and the errors before training."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.lib import launch
from tests.conftest import REPO, read_jsonl
from tests.wandb_records import find_run_file, history_keys

RUBRIC = "pipeline.demo.rubric:house_style_score"


def make_ppo_run(root: Path, policy: str, reward: str | None = None, demo_dir: Path | None = None) -> Path:
    """A run folder with ``policy`` as its 'SFT model', ``reward`` (default: the policy) with a fresh scalar head as
    its 'reward model', and the demo's prompts (by default from the cached demo data beside the policy)."""
    from pipeline.demo.data import ensure_demo_data

    demo = demo_dir or ensure_demo_data(Path(policy).parent.parent)
    reward = reward or policy
    root.mkdir(parents=True, exist_ok=True)
    for split in ("prompts", "eval_prompts"):
        shutil.copy(demo / f"{split}.jsonl", root / f"{split}.jsonl")
    shutil.copytree(policy, root / "t" / "sft" / "model")
    tokenizer = AutoTokenizer.from_pretrained(reward)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(reward, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(root / "t" / "rm" / "model")
    tokenizer.save_pretrained(root / "t" / "rm" / "model")
    (root / "t" / "rm" / "reward_stats.json").write_text(json.dumps({"mean": 0.1, "std": 2.0}))
    return root


@pytest.fixture
def ppo_run(tmp_path, micro_model) -> Path:
    return make_ppo_run(tmp_path, micro_model)


def ppo_args(runs_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / "ppo.yaml"),
        "--run",
        "t",
        "--runs_dir",
        str(runs_dir),
        "--prompts",
        str(runs_dir / "prompts.jsonl"),
        "--rubric",
        RUBRIC,
        "--total_episodes",
        "32",
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
        "--per_device_eval_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--checkpoint_steps",
        "2",
        "--report_to",
        "none",
        *extra,
    ]


def run_ppo(args: list[str]) -> dict:
    from pipeline.lib.stage import parse
    from ppo.config import PPOStageConfig
    from ppo.train import main

    return main(*parse(PPOStageConfig, "ppo", args))


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def changed(model_dir: Path, base_dir: Path, name: str = "model.layers.0.self_attn.q_proj.weight") -> bool:
    return not torch.equal(weights(model_dir)[name], weights(base_dir)[name])


def test_ppo_trains_logs_and_saves_a_plain_model(ppo_run):
    summary = run_ppo(ppo_args(ppo_run, "--report_to", "wandb", "--adaptive_kl", "true", "--length_penalty", "0.01"))
    stage = ppo_run / "t" / "ppo"
    metrics = summary["metrics"]
    assert metrics["global_step"] == 4 and metrics["episodes"] == 32
    for key in (
        "timing_generation_s_mean",
        "timing_scoring_s_mean",
        "timing_reference_s_mean",
        "timing_value_s_mean",
        "timing_optimisation_s_mean",
        "kl_last",
        "gold_score_last",
        "eos_rate_last",
        "response_length_last",
    ):
        assert key in metrics, key
    assert metrics["reward_normalisation"][0]["mean"] == 0.1 and metrics["reward_normalisation"][0]["std"] == 2.0
    # The adaptive controller moved the coefficient away from where configs/ppo.yaml starts it.
    assert metrics["final_kl_coef"] != pytest.approx(0.1, abs=1e-12)

    history = read_jsonl(stage / "history.jsonl")
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert [h["episode"] for h in history] == [8, 16, 24, 32]
    assert all(h["timing/generation_s"] > 0 and h["timing/scoring_s"] > 0 for h in history)
    # The controller's coefficient of each step is the one the previous step's KL moved it to.
    assert history[0]["objective/kl_coef"] == pytest.approx(0.1) and history[3]["objective/kl_coef"] != 0.1
    # The score is the normalised raw score minus the length penalty, (raw - 0.1) / 2 - 0.01 * length, minus the
    # missing_eos_penalty (1.0 in configs/ppo.yaml) for the responses that never ended.
    for h in history:
        expected = (h["rollout/raw_score"] - 0.1) / 2.0 - 0.01 * h["rollout/response_length"]
        expected -= 1.0 * (1 - h["rollout/eos_rate"])
        assert h["objective/scores"] == pytest.approx(expected, abs=1e-4)
        assert h["objective/rlhf_reward"] == pytest.approx(h["objective/scores"] + h["objective/non_score_reward"])

    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    assert model.config.model_type == "llama"
    assert changed(stage / "model", ppo_run / "t" / "sft" / "model")
    AutoModelForSequenceClassification.from_pretrained(stage / "value_model")
    # configs/ppo.yaml's 4 snapshots, in a run of 4 steps: one after each step before the last.
    index = json.loads((stage / "snapshots" / "index.json").read_text())
    assert [(s["step"], s["episode"]) for s in index["snapshots"]] == [(1, 8), (2, 16), (3, 24)]
    assert index["final"] == {"step": 4, "episode": 32} and summary["outputs"]["snapshots"] == str(stage / "snapshots")
    folders = [stage / "snapshots" / s["path"] for s in index["snapshots"]]
    assert [f.parent.name for f in folders] == ["step_1", "step_2", "step_3"]
    for folder in folders:
        AutoTokenizer.from_pretrained(folder)
        assert AutoModelForCausalLM.from_pretrained(folder).config.model_type == "llama"
    # Each a policy of its own step: trained away from SFT, and from each other and the final policy.
    for a, b in zip([ppo_run / "t" / "sft" / "model", *folders], [*folders, stage / "model"], strict=True):
        assert changed(a, b)
    keys = history_keys(find_run_file(stage / "wandb"))
    wanted = [
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/non_score_reward",
        "objective/kl_coef",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "timing/generation_s",
        "timing/scoring_s",
        "timing/reference_s",
        "timing/value_s",
        "timing/optimisation_s",
        "rollout/eos_rate",
        "rollout/response_length",
        "rollout/gold_score",
    ]
    assert {f"train/{key}" for key in wanted} <= keys

    # make eval on the outputs: SFT against PPO on held-out prompts.
    from evaluation.evaluate import EvalConfig
    from evaluation.evaluate import main as evaluate

    config = EvalConfig(
        run="t",
        runs_dir=str(ppo_run),
        prompts=str(ppo_run / "eval_prompts.jsonl"),
        rubric=RUBRIC,
        num_prompts=4,
        max_new_tokens=8,
        best_of_n=[1, 2, 4],
        best_of_n_prompts=3,
        report_to="none",
    )
    result = evaluate(config)
    m = result["metrics"]
    # Best-of-n from the SFT policy: 3 prompts x 4 samples; the closed-form KL; the reward of the pick never falls.
    assert [b["n"] for b in m["best_of_n"]] == [1, 2, 4] and m["best_of_n_prompts"] == 3
    assert [b["kl"] for b in m["best_of_n"]] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    rewards_by_n = [b["reward_mean"] for b in m["best_of_n"]]
    assert rewards_by_n == sorted(rewards_by_n) and {"gold_score", "gold_win_rate_vs_sft"} <= m["best_of_n"][0].keys()
    assert m["best_of_n_verdict"].split()[0] in ("PPO", "Best-of-1", "Best-of-2", "Best-of-4")
    assert 0.0 <= m["gold_win_rate_ppo_vs_sft"] <= 1.0
    assert m["num_prompts"] == 4 and 0.0 <= m["win_rate_ppo_vs_sft"] <= 1.0
    assert (
        m["gold_rubric"] == RUBRIC
        and json.loads((ppo_run / "t" / "eval" / "summary.json").read_text())["metrics"]["gold_rubric"] == RUBRIC
    )
    assert m["sft"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)  # the reference is the SFT model itself
    assert {"reward_mean", "gold_score", "eos_rate", "response_length"} <= set(m["ppo"])
    # Each snapshot evaluated on the prompts (4 here, fewer than snapshot_prompts), then the final policy on them: its
    # figures on those prompts, here all of them, are the PPO policy's.
    points = m["ppo_snapshots"]
    assert [(p["step"], p["episode"], p.get("final", False)) for p in points] == [
        (1, 8, False),
        (2, 16, False),
        (3, 24, False),
        (4, 32, True),
    ]
    assert m["ppo_snapshot_prompts"] == 4 and points[-1] == {"step": 4, "episode": 32, "final": True, **m["ppo"]}
    for p in points[:-1]:
        assert {"reward_mean", "gold_score", "kl_to_reference", "response_length", "eos_rate"} <= p.keys()
        assert p["kl_to_reference"] != 0.0  # measured against SFT, which each snapshot moved away from
    assert m["ppo_snapshots_summary"].startswith("PPO over training, gold score on the first 4 prompts: step 1: ")
    assert result["inputs"]["ppo_snapshots"]["path"].endswith("snapshots/index.json")
    eval_dir = ppo_run / "t" / "eval"
    assert m["ppo_snapshots_summary"] in (eval_dir / "report.md").read_text()
    assert "PPO wins against SFT" in (eval_dir / "report.md").read_text()
    assert f"Gold scores by the rubric `{RUBRIC}`." in (eval_dir / "report.md").read_text()
    assert "## Best-of-n from the SFT policy" in (eval_dir / "report.md").read_text()
    for png in ("reward_scores.png", "sft_vs_ppo.png", "kl_frontier.png"):
        assert (eval_dir / png).read_bytes()[:4] == b"\x89PNG"

    # The pipeline's report, from these files: the snapshots' sentence beside best-of-n, and the frontier plot.
    from types import SimpleNamespace

    from pipeline.conductor.report import write_report

    report = write_report(SimpleNamespace(run="t", runs_dir=str(ppo_run), rubric=RUBRIC, rounds=1)).read_text()
    assert m["ppo_snapshots_summary"] in report and "![score against KL](report_t_kl_frontier.png)" in report


def test_a_fixed_kl_coefficient_stays_fixed(ppo_run):
    history_path = ppo_run / "t" / "ppo" / "history.jsonl"
    run_ppo(ppo_args(ppo_run, "--total_episodes", "16"))
    assert {h["objective/kl_coef"] for h in read_jsonl(history_path)} == {0.1}


def test_ppo_lora_merges_and_uses_the_adapter_free_reference(ppo_run):
    metrics = run_ppo(ppo_args(ppo_run, "--use_lora", "true", "--lora_r", "4"))["metrics"]
    stage = ppo_run / "t" / "ppo"
    # The value model trains its adapters and scalar head only: r=4 on every linear layer of the micro model.
    assert 0 < metrics["value_trainable_parameters"] < 0.1 * metrics["value_parameters"]
    assert (stage / "adapter" / "adapter_config.json").exists()
    assert not any("lora" in key for key in weights(stage / "model"))
    assert changed(stage / "model", ppo_run / "t" / "sft" / "model")
    AutoModelForCausalLM.from_pretrained(stage / "model")
    # The snapshots are saved as the final policy is: the adapter, merged into a plain model.
    for step in (1, 2, 3):
        snapshot = stage / "snapshots" / f"step_{step}"
        assert (snapshot / "adapter" / "adapter_config.json").exists()
        assert not any("lora" in key for key in weights(snapshot / "model"))
        assert changed(snapshot / "model", ppo_run / "t" / "sft" / "model")
    assert changed(stage / "snapshots" / "step_3" / "model", stage / "model")
    # The first step's KL is measured against the policy with its adapter off, which starts as the SFT model itself.
    first = read_jsonl(stage / "history.jsonl")[0]
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-4)


def test_resume_after_sigkill_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, micro_model):
    args = ["--total_episodes", "48", "--checkpoints_to_keep", "5"]
    straight = make_ppo_run(tmp_path / "straight", micro_model)
    run_ppo(ppo_args(straight, *args))

    killed = make_ppo_run(tmp_path / "killed", micro_model)
    checkpoints = killed / "t" / "ppo" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, "-m", "ppo.train", *ppo_args(killed, *args)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (checkpoints / "checkpoint-2" / "meta.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The guard: it really died mid-run, after step 2's checkpoint and before finishing.
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "t" / "ppo" / "summary.json").exists()

    summary = run_ppo(ppo_args(killed, *args, "--resume", "true"))
    for name in ("model", "value_model"):
        a, b = weights(straight / "t" / "ppo" / name), weights(killed / "t" / "ppo" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs from the uninterrupted run's"
    # The history and the summary cover the whole run, and say where it was resumed.
    history = read_jsonl(killed / "t" / "ppo" / "history.jsonl")
    straight_history = read_jsonl(straight / "t" / "ppo" / "history.jsonl")
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    for key in ("objective/scores", "objective/kl", "lr", "episode"):
        assert [h[key] for h in history] == [h[key] for h in straight_history], key
    resumed_from = summary["metrics"]["resumed_at_steps"]
    assert len(resumed_from) == 1 and resumed_from[0] in (2, 4)
    # The snapshots (4 of a 6-step run: after steps 1, 2, 4, 5) are those of the uninterrupted run, each listed once.
    snapshots = [run / "t" / "ppo" / "snapshots" for run in (straight, killed)]
    index = [json.loads((d / "index.json").read_text()) for d in snapshots]
    assert index[0] == index[1] and [s["step"] for s in index[1]["snapshots"]] == [1, 2, 4, 5]
    assert sorted(p.name for p in snapshots[1].glob("step_*")) == ["step_1", "step_2", "step_4", "step_5"]
    for entry in index[1]["snapshots"]:
        a, b = weights(snapshots[0] / entry["path"]), weights(snapshots[1] / entry["path"])
        assert all(torch.equal(a[k], b[k]) for k in a), f"the snapshot of step {entry['step']} differs"
    assert summary["metrics"]["score_first"] == pytest.approx(history[0]["objective/scores"])


def test_resume_without_checkpoint_says_what_to_do(ppo_run):
    from ppo.checkpoint import ResumeError

    with pytest.raises(ResumeError, match="no checkpoint"):
        run_ppo(ppo_args(ppo_run, "--resume", "true"))


def test_resume_with_other_settings_names_them(ppo_run):
    from ppo.checkpoint import ResumeError

    run_ppo(ppo_args(ppo_run, "--total_episodes", "24"))  # 3 steps: a checkpoint after step 2
    with pytest.raises(ResumeError, match="kl_coef: 0.1 -> 0.3"):
        run_ppo(ppo_args(ppo_run, "--total_episodes", "24", "--resume", "true", "--kl_coef", "0.3"))


def test_missing_reward_model_names_the_stage_to_run(ppo_run):
    shutil.rmtree(ppo_run / "t" / "rm")
    from pipeline.lib.errors import MissingInputError

    with pytest.raises(MissingInputError, match="make rm RUN=t"):
        run_ppo(ppo_args(ppo_run))


def other_tokenizer_reward_model(path: Path) -> Path:
    """A reward model with a tokenizer of its own: 512 tokens learnt on the demo text, another chat template."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from pipeline.demo.base_model import train_tokenizer
    from pipeline.demo.data import corpus_texts

    tokenizer = train_tokenizer(corpus_texts(seed=1)[:400], 512)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    return path


def test_a_reward_model_with_its_own_tokenizer_scores_the_decoded_text(ppo_run):
    rm_dir = other_tokenizer_reward_model(ppo_run / "other_rm")
    policy_tokenizer = AutoTokenizer.from_pretrained(ppo_run / "t" / "sft" / "model")
    assert len(AutoTokenizer.from_pretrained(rm_dir)) != len(policy_tokenizer)
    summary = run_ppo(ppo_args(ppo_run, "--reward_model_path", str(rm_dir)))
    assert summary["metrics"]["global_step"] == 4
    notes = " ".join(summary["notes"])
    assert "tokenizer differs from the policy's" in notes and "vocabulary size" in notes
    assert "critic starts from the SFT model" in notes
    history = read_jsonl(ppo_run / "t" / "ppo" / "history.jsonl")
    assert all(torch.isfinite(torch.tensor(h["rollout/raw_score"])) for h in history)


def test_the_text_a_foreign_reward_model_reads_is_its_own_template(ppo_run):
    from ppo.rewards import load_reward_models, render_for

    rm_dir = other_tokenizer_reward_model(ppo_run / "other_rm")
    policy_tokenizer = AutoTokenizer.from_pretrained(ppo_run / "t" / "sft" / "model")
    (rm,) = load_reward_models([rm_dir], None, True, policy_tokenizer, torch.float32)
    text = render_for(rm, [{"role": "user", "content": "Where is my order?"}], "Hi Sam, it ships today.")
    assert text == "[user] Where is my order?\n[assistant] Hi Sam, it ships today.\n"


def test_an_ensemble_is_read_whole_and_combined_by_mean_minus_std(ppo_run):
    """The run's rm/ensemble.json (as `make rm` writes it with ensemble: 2) makes PPO score with both members."""
    rm = ppo_run / "t" / "rm"
    for i in range(2):
        shutil.copytree(rm / "model", rm / "members" / str(i) / "model")
    second = rm / "members" / "1" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(second)
    torch.manual_seed(7)
    model.score.weight.data.normal_()  # another head: the two members disagree
    model.save_pretrained(second)
    shutil.copy(rm / "reward_stats.json", rm / "members" / "0" / "reward_stats.json")
    (rm / "members" / "1" / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    (rm / "ensemble.json").write_text(json.dumps({"members": ["members/0/model", "members/1/model"]}))
    summary = run_ppo(ppo_args(ppo_run, "--reward_aggregation", "mean_minus_std", "--reward_std_coef", "0.5"))
    assert summary["inputs"]["reward_model_1"]["path"].endswith("members/1/model")
    for h in read_jsonl(ppo_run / "t" / "ppo" / "history.jsonl"):
        assert h["reward/std"] > 0
        # The mean over rollouts of (mean - 0.5 std) is the mean of each model's mean minus 0.5 times the mean std.
        expected = (h["reward/model_0"] + h["reward/model_1"]) / 2 - 0.5 * h["reward/std"]
        assert h["objective/scores"] == pytest.approx(expected - 1.0 * (1 - h["rollout/eos_rate"]), abs=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reward_aggregation", "median"], "unknown 'median'"),
        (["--reward_aggregation", "mean_minus_std"], "at least 2 reward models"),
        (["--generation_backend", "vllm"], "needs a CUDA GPU"),
        (["--snapshots", "-1"], r"snapshots must be 0 \(none\) or a number of policy snapshots"),
    ],
)
def test_bad_settings_stop_before_training(ppo_run, extra, message):
    if "vllm" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present: the vLLM check passes")
    rm = str(ppo_run / "t" / "rm" / "model")
    with pytest.raises((ValueError, RuntimeError), match=message):
        run_ppo(ppo_args(ppo_run, "--reward_model_path", rm, *extra))
    assert not (ppo_run / "t" / "ppo" / "model").exists()


def test_a_reward_model_that_cannot_load_is_named(ppo_run):
    from pipeline.lib.errors import MissingInputError

    broken = ppo_run / "broken_rm"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(MissingInputError, match=r"reward_model_path\[1\] = .*broken_rm"):
        run_ppo(ppo_args(ppo_run, "--reward_model_path", str(ppo_run / "t" / "rm" / "model"), str(broken)))
    assert not (ppo_run / "t" / "ppo" / "model").exists()


def one_update(runs_dir: Path, per_device: int, accumulation: int, *extra: str) -> dict[str, torch.Tensor]:
    run_ppo(
        ppo_args(
            runs_dir,
            "--total_episodes",
            "8",
            "--per_device_train_batch_size",
            str(per_device),
            "--gradient_accumulation_steps",
            str(accumulation),
            "--num_ppo_epochs",
            "1",
            "--checkpoint_steps",
            "0",
            *extra,
        )
    )
    return weights(runs_dir / "t" / "ppo" / "model")


def assert_same_update(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    """Equal up to float summation order. Adam's first step is about lr * sign(gradient), and for a gradient near its
    epsilon the order of the sums shows: the bound is 1% of the largest change (1e-3 here), not 1e-6."""
    for k in base:
        update_a, update_b = a[k] - base[k], b[k] - base[k]
        assert update_a.abs().max() > 1e-4, f"the update did nothing to {k}"
        assert (update_a - update_b).abs().max() <= 0.01 * update_a.abs().max(), k
        assert (update_a - update_b).abs().mean() <= 1e-5 * update_a.abs().max(), k


def test_batch_1_with_accumulation_8_makes_the_update_of_batch_8(tmp_path, micro_model):
    base = weights(Path(micro_model))
    eight = one_update(make_ppo_run(tmp_path / "a", micro_model), 8, 1)
    accumulated = one_update(make_ppo_run(tmp_path / "b", micro_model), 1, 8)
    assert_same_update(eight, accumulated, base)


def launch_ppo(runs_dir: Path, zero: int, processes: int, *args: str) -> None:
    cmd = [*launch.command("ppo.train", nproc=processes, zero=zero), *ppo_args(runs_dir, *args)]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.slow
@pytest.mark.parametrize(("zero", "lora"), [(2, False), (3, False), (2, True)])
def test_two_processes_under_deepspeed(ppo_run, zero, lora):
    extra = ["--use_lora", "true", "--lora_r", "4"] if lora else []
    launch_ppo(ppo_run, zero, 2, *extra)
    stage = ppo_run / "t" / "ppo"
    summary = json.loads((stage / "summary.json").read_text())
    # 2 processes x 8 rollouts per step: 32 episodes in 2 steps.
    assert summary["metrics"]["global_step"] == 2
    AutoModelForCausalLM.from_pretrained(stage / "model")
    assert changed(stage / "model", ppo_run / "t" / "sft" / "model")
    # The snapshot after step 1 of 2, gathered and saved as the final policy is.
    index = json.loads((stage / "snapshots" / "index.json").read_text())
    assert [(s["step"], s["episode"]) for s in index["snapshots"]] == [(1, 16)] and index["final"]["step"] == 2
    snapshot = stage / "snapshots" / "step_1" / "model"
    AutoModelForCausalLM.from_pretrained(snapshot)
    assert changed(snapshot, ppo_run / "t" / "sft" / "model") and changed(snapshot, stage / "model")


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_two_processes_under_zero_make_the_first_update_of_one(tmp_path, micro_model, zero):
    """The same 8 rollouts (sampling is seeded per rollout), advantages whitened over both processes, the loss
    normalised by both processes' tokens: two processes of 4 make one process's update of 8."""
    base = weights(Path(micro_model))
    # Adam's epsilon at 1e-6: a gradient element far below it moves its weight by far less than lr, so the order of
    # the two processes' sums cannot flip a near-zero element's step (with 1e-8 one element came out 1.08% apart).
    one = one_update(make_ppo_run(tmp_path / "one", micro_model), 8, 1, "--adam_epsilon", "1e-6")
    two_dir = make_ppo_run(tmp_path / "two", micro_model)
    launch_ppo(
        two_dir,
        zero,
        2,
        "--adam_epsilon",
        "1e-6",
        "--total_episodes",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--num_ppo_epochs",
        "1",
        "--checkpoint_steps",
        "0",
    )
    assert_same_update(one, weights(two_dir / "t" / "ppo" / "model"), base)


@pytest.mark.gpu
def test_vllm_backend_trains_and_pushes_the_weights(ppo_run):
    """On a GPU with the vllm extra: rollouts from vLLM, the policy's weights pushed into it after each update."""
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        pytest.skip("needs a CUDA GPU and `pip install -e .[vllm]`; the HF backend is tested on the CPU above")
    summary = run_ppo(ppo_args(ppo_run, "--generation_backend", "vllm", "--vllm_gpu_memory_utilization", "0.2"))
    assert summary["metrics"]["global_step"] == 4
    assert changed(ppo_run / "t" / "ppo" / "model", ppo_run / "t" / "sft" / "model")
