"""PPO: the project's stage (``ppo.train``) against plain TRL, full against LoRA, one process against two under ZeRO.

Policy and reference are the embedded tiny Llama; the reward and value models are a stand-in built from it with a
scalar head (as ``tests/test_ppo.py`` does), so PPO runs without the reward stage. Every program gets the same PPO
flags and the same demo prompts. Episodes/s is the steady state after the first step; the phase times come from the
harness (identical wrapping of TRL's loop for both programs); the stage's own ``timing/*`` figures from its
``history.jsonl`` are reported beside them.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from bench.core import (
    TARGET_VS_TRL,
    CaseResult,
    Comparison,
    Shape,
    Workspace,
    accelerate_launch,
    compare,
    harness_cmd,
    random_llama,
    read_ranks,
    run_process,
    run_rounds,
    training_metrics,
)

TARGET_LORA_MEMORY = ("<=", 0.7)
# About 60M parameters: large enough that the models' own memory shows next to the runtime's.
WIDE = Shape(hidden=768, layers=8, heads=12, intermediate=2048)


def build_inputs(ws: Workspace, base: str) -> dict[str, Path]:
    """The SFT model (a copy of ``base``), a stand-in reward model with a scalar head, and its statistics."""
    root = ws.work / "ppo_inputs" / Path(base).name
    paths = {"sft": root / "sft", "rm": root / "rm", "stats": root / "reward_stats.json"}
    if paths["stats"].exists():
        return paths
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    shutil.copytree(base, paths["sft"], dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    with suppress_seqcls_warning():  # the new score head is expected
        rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(paths["rm"])
    tokenizer.save_pretrained(paths["rm"])
    paths["stats"].write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    return paths


def ppo_flags(steps: int, world_size: int = 1, batch: int = 8, accumulation: int = 2, response_length: int = 32,
              ppo_epochs: int = 2) -> list[str]:  # fmt: skip
    """The PPO flags both programs get. One step is batch x accumulation x processes episodes."""
    flags = {
        "total_episodes": steps * batch * accumulation * world_size, "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation, "num_mini_batches": 1, "num_ppo_epochs": ppo_epochs,
        "local_rollout_forward_batch_size": batch, "response_length": response_length, "temperature": 0.7,
        "learning_rate": 2e-5, "kl_coef": 0.05, "missing_eos_penalty": 1.0, "stop_token": "eos", "seed": 0,
        "num_sample_generations": 0, "per_device_eval_batch_size": batch, "logging_steps": 1, "report_to": "none",
        "bf16": "false", "gradient_checkpointing": "false", "save_strategy": "no", "num_prompts": 200, "eval_prompts": 16, "max_prompt_length": 256,
    }  # fmt: skip
    return [f"--{k}" if i % 2 == 0 else str(v) for k, v in flags.items() for i in (0, 1)]


def stage_metrics(run_dir: Path, skip: int) -> dict[str, float]:
    """The stage's own per-step timings (``timing/*`` in history.jsonl), averaged over the measured steps."""
    path = run_dir / "bench" / "ppo" / "history.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][skip:]
    out = {}
    for phase in ("generation", "scoring", "optimisation"):
        values = [r[f"timing/{phase}_s"] for r in rows if f"timing/{phase}_s" in r]
        if values:
            out[f"stage_{phase}_s"] = statistics.mean(values)
    return out


class PPORunner:
    def __init__(self, ws: Workspace, case: str, base: str, steps: int, skip: int, **flag_kwargs):
        self.ws, self.case, self.steps, self.skip, self.flag_kwargs = ws, case, steps, skip, flag_kwargs
        self.inputs = build_inputs(ws, base)

    def stage(self, name: str, extra: list[str] = (), launch: list[str] | None = None, world_size: int = 1):
        def go(round_: int) -> dict[str, float]:
            run_dir = self.ws.run_dir(self.case, name, round_)
            metrics = run_dir / "metrics"
            args = ["--config", "configs/ppo.yaml", "--run", "bench", "--runs_dir", str(run_dir),
                    "--sft_model_path", str(self.inputs["sft"]), "--reward_model_path", str(self.inputs["rm"]),
                    "--reward_stats", str(self.inputs["stats"]), "--checkpoint_steps", "0",
                    *ppo_flags(self.steps, world_size, **self.flag_kwargs), *extra]  # fmt: skip
            process = run_process(
                harness_cmd("ppo.train", args, metrics, ppo=True, launch=launch), run_dir / "log.txt", self.ws.env()
            )
            ranks = read_ranks(metrics)
            return {**training_metrics(ranks, self.skip), **stage_metrics(run_dir, self.skip), **process}

        return go

    def plain(self, round_: int) -> dict[str, float]:
        run_dir = self.ws.run_dir(self.case, "plain_trl", round_)
        metrics = run_dir / "metrics"
        args = ["--prompts_file", str(self.ws.demo_dir() / "prompts.jsonl"), "--sft_model_path",
                str(self.inputs["sft"]), "--reward_model_path", str(self.inputs["rm"]), "--output_dir",
                str(run_dir / "out"), *ppo_flags(self.steps, **self.flag_kwargs)]  # fmt: skip
        process = run_process(
            harness_cmd("bench.baselines.ppo_plain", args, metrics, ppo=True), run_dir / "log.txt", self.ws.env()
        )
        return {**training_metrics(read_ranks(metrics), self.skip), **process}


def _settings(runner: PPORunner, model: str) -> dict:
    return {"model": model, "reward_model": "stand-in: the same with a scalar head", "steps": runner.steps,
            "skipped_steps": runner.skip, "flags": " ".join(ppo_flags(runner.steps, **runner.flag_kwargs))}  # fmt: skip


def run(ws: Workspace) -> CaseResult:
    steps, skip = (3, 1) if ws.quick else (4, 1)
    result = CaseResult("ppo", "PPO: project stage vs plain TRL PPOTrainer")
    runner = PPORunner(ws, "ppo", ws.model(), steps, skip)
    result.settings = _settings(runner, "embedded:tiny-llama")
    run_rounds(result, {"stage": runner.stage("stage"), "plain_trl": runner.plain}, **ws.rounds())
    compare(result, Comparison("stage / plain TRL episodes/s", "episodes_per_s", "stage", "plain_trl", TARGET_VS_TRL))
    compare(result, Comparison("stage / plain TRL peak RSS", "peak_rss_mb", "stage", "plain_trl"))
    result.notes.append(
        "Phases (s/step, harness): generation = TRL's batch_generation; reference = the reference forward; value and "
        "scoring = get_reward on the value and reward models; optimisation = the rest of the step (advantages, "
        "PPO epochs). stage_* are the stage's own timing/* from history.jsonl (its scoring includes the "
        "normalisation, its generation the gold rubric of each rollout)."
    )
    return result


def run_lora(ws: Workspace) -> CaseResult:
    """Peak memory of the stage with a full reference model against LoRA, whose reference is the policy with the
    adapter disabled (no second copy). On the 4M-parameter tiny model the Python/torch runtime is nearly all of the
    RSS, so the full run uses a wider random Llama (about 60M parameters) on which the models' own memory shows;
    --quick keeps the tiny model."""
    result = CaseResult("ppo_lora", "PPO: LoRA (adapter-disabled reference, value adapters) vs full fine-tune, peak "
                        "memory")  # fmt: skip
    if ws.quick:
        runners = {"tiny": PPORunner(ws, "ppo_lora", ws.model(), 2, 1)}
    else:
        runners = {"60m": PPORunner(ws, "ppo_lora", str(random_llama(ws, WIDE, max_positions=1024)), 2, 1, batch=4, accumulation=1,
                                    response_length=16, ppo_epochs=1)}  # fmt: skip
    result.settings = {name: _settings(r, name) for name, r in runners.items()}
    lora = ["--use_lora", "true", "--lora_r", "16", "--lora_alpha", "32"]
    variants = {}
    for name, runner in runners.items():
        variants[f"full_{name}"] = runner.stage(f"full_{name}")
        variants[f"lora_{name}"] = runner.stage(f"lora_{name}", lora)
    run_rounds(result, variants, **ws.rounds())
    for name in runners:
        compare(result, Comparison(f"LoRA / full peak RSS ({name})", "peak_rss_mb", f"lora_{name}", f"full_{name}",
                                   TARGET_LORA_MEMORY))  # fmt: skip
        compare(result, Comparison(f"LoRA / full episodes/s ({name})", "episodes_per_s", f"lora_{name}",
                                   f"full_{name}"))  # fmt: skip
    result.notes.append(
        "Peak RSS is the whole process: the Python, torch and TRL runtime (roughly 0.6-0.9 GB) is in both sides. "
        "With LoRA the value model gets adapters too (value_lora, the default), its scalar head trained in full."
    )
    return result


def run_zero(ws: Workspace) -> CaseResult:
    """The stage under ``accelerate launch``: one process, and two processes under ZeRO-2 and ZeRO-3 (DeepSpeed's
    CPU accelerator, gloo). Each run uses the whole machine: threads per process = cores / processes. A step is
    per-device batch x accumulation x processes episodes, so two processes do twice the episodes per step."""
    import os

    result = CaseResult("ppo_zero", "PPO stage: 1 process vs 2 processes under ZeRO-2 / ZeRO-3")
    steps, skip = (2, 1) if ws.quick else (3, 1)
    runner = PPORunner(ws, "ppo_zero", ws.model(), steps, skip)
    cores = os.cpu_count() or 2
    one, two = (ws.threads, ws.threads) if ws.threads else (cores, max(cores // 2, 1))
    result.settings = {**_settings(runner, "embedded:tiny-llama"), "threads_per_process": f"{cores} / processes"}
    variants = {
        "1proc": runner.stage("1proc", launch=accelerate_launch("single", 1, one)),
        "2proc_zero2": runner.stage("2proc_zero2", launch=accelerate_launch("zero2", 2, two),
                                    world_size=2),
        "2proc_zero3": runner.stage("2proc_zero3", launch=accelerate_launch("zero3", 2, two),
                                    world_size=2),
    }  # fmt: skip
    if ws.quick:  # one of the two: ZeRO-2 starts faster
        variants.pop("2proc_zero3")
    run_rounds(result, variants, **ws.rounds())
    for name in variants:
        if name != "1proc":
            compare(result, Comparison(f"{name} / 1 process episodes/s", "episodes_per_s", name, "1proc"))
            compare(result, Comparison(f"{name} / 1 process peak RSS, all ranks", "peak_tree_rss_mb", name, "1proc"))
    return result
