"""Stage 4, PPO: ``make ppo`` (``accelerate launch -m ppo.train --config configs/ppo.yaml``).

TRL's PPOTrainer optimises the policy (from the run's SFT model) against the reward model (from the run's RM stage),
with the value model initialised from the reward model. Rewards are normalised with the reward model's training
statistics, responses without EOS are penalised, an optional per-token length penalty applies, and the KL coefficient
is fixed or adapts toward a target KL. Writes ``runs/<run>/ppo/``: ``model/`` (loads with AutoModelForCausalLM; LoRA
merged unless ``merge_lora: false``), ``checkpoints/``, ``history.jsonl`` (per-step metrics), config.yaml and
summary.json.

Resume (``RESUME=1``) restores, from the latest checkpoint: policy and value weights, optimizer state, the learning
rate schedule's position, the step and episode counters, the KL coefficient and the RNG states. The prompt order is
reshuffled rather than replayed, since TRL's loop has no way to skip batches.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,  # noqa: E402
)
from trl import TrlParser  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

from pipeline import runs  # noqa: E402
from pipeline.candidates import load_prompts  # noqa: E402
from pipeline.distributed import fill_training_defaults, release_zero3_init  # noqa: E402
from pipeline.models import lora_config, merge_adapter  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from ppo.rollout import PPOStepCallback, RolloutStats, ShapedRewardModel, instrument_generation  # noqa: E402
from ppo.shaping import AdaptiveKLController  # noqa: E402

OOM_ADVICE = (
    "Out of memory. To use less: LoRA (--use_lora true: no separate reference model), ZeRO-3 (make ppo ZERO=3), "
    "a smaller rollout (--per_device_train_batch_size / --gradient_accumulation_steps), a shorter --response_length, "
    "or a smaller --local_rollout_forward_batch_size."
)


@dataclass
class PPOStageConfig(PPOConfig):
    """Everything TRL's ``PPOConfig`` takes, plus the stage's own settings below."""

    run: str = field(default=runs.DEFAULT_RUN, metadata={"help": "Run name: outputs go to <runs_dir>/<run>/ppo/."})
    runs_dir: str = "runs"
    sft_model_path: str | None = field(default=None, metadata={"help": "Policy and reference; default: run's SFT."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Default: the run's RM output."})
    reward_stats: str | None = field(default=None, metadata={"help": "Default: reward_stats.json beside the RM."})
    prompts: str = field(default="demo", metadata={"help": "'demo' (the prompt pool) or a file with 'prompt'."})
    num_prompts: int | None = None
    eval_prompts: int = field(default=16, metadata={"help": "Prompts held out from training for sample tables."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longer prompts are dropped (and counted)."})
    normalize_rewards: bool = field(default=True, metadata={"help": "Scale scores by the RM's training mean/std."})
    length_penalty: float = field(default=0.0, metadata={"help": "Subtracted from the score per response token."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef toward target_kl (Ziegler et al.)."})
    target_kl: float = 6.0
    kl_horizon: float = 10000.0
    rubric: str | None = field(
        default=None, metadata={"help": "module:function gold score logged per step; default with demo prompts."}
    )
    use_lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    merge_lora: bool = field(default=True, metadata={"help": "Save the policy with the adapter merged in."})
    value_lora: bool = field(
        default=True, metadata={"help": "With use_lora: adapters in the value model too (its scalar head trained in "
                                "full); false trains the value model in full."}
    )  # fmt: skip
    checkpoint_steps: int = field(default=10, metadata={"help": "Save a resumable checkpoint every N steps (0: off)."})
    checkpoints_to_keep: int = 2
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint of this run."})
    report_to: str | None = field(default="wandb", metadata={"help": "wandb (offline without a key), trackio, none."})
    bf16: bool | None = field(default=None, metadata={"help": "Default: on when a GPU with bf16 support is present."})
    gradient_checkpointing: bool = False
    stop_token: str | None = "eos"
    # TRL's own checkpointing saves through a path that fails under ZeRO-3; checkpoint_steps replaces it.
    save_strategy: str = "no"

    def __post_init__(self):
        fill_training_defaults(self, "ppo")
        super().__post_init__()
        if self.adaptive_kl and self.target_kl <= 0:
            raise ValueError(f"target_kl must be positive with adaptive_kl, got {self.target_kl}.")
        if self.length_penalty < 0:
            raise ValueError("length_penalty is subtracted per token: give a value >= 0.")
        if self.total_episodes is None:
            raise ValueError("Set total_episodes (rollouts to train on), e.g. total_episodes: 1024.")


class StagePPOTrainer(PPOTrainer):
    """TRL's PPOTrainer with a learning-rate schedule that survives resume, and sample tables kept out of the stats."""

    def __init__(self, *args, schedule_steps: int, rollout_stats: RolloutStats, **kwargs):
        self._schedule_steps, self.rollout_stats = schedule_steps, rollout_stats
        super().__init__(*args, **kwargs)

    def create_optimizer_and_scheduler(self, num_training_steps: int):
        # On resume TRL is given only the remaining episodes; the schedule must still span the whole run.
        super().create_optimizer_and_scheduler(num_training_steps=self._schedule_steps)

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        # With adapters in both models no trainable weight is exempt from weight decay, so that group is empty;
        # DeepSpeed drops empty groups and the scheduler, made for both, then fails at its first step.
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def generate_completions(self, sampling: bool = False):
        self.rollout_stats.paused = True
        try:
            super().generate_completions(sampling=sampling)
        finally:
            self.rollout_stats.paused = False


class CheckpointCallback(TrainerCallback):
    """Every ``checkpoint_steps``: model and optimizer (accelerate's state), schedule, counters and KL coefficient."""

    def __init__(self, trainer: StagePPOTrainer, config: PPOStageConfig):
        self.trainer, self.config = trainer, config

    def on_step_end(self, args, state, control, **kwargs):
        every = self.config.checkpoint_steps
        if every and state.global_step % every == 0:
            save_checkpoint(self.trainer, Path(self.config.output_dir) / f"checkpoint-{state.global_step}", state)
            if self.trainer.accelerator.is_main_process:
                for old in list_checkpoints(self.config.output_dir)[: -self.config.checkpoints_to_keep]:
                    shutil.rmtree(old, ignore_errors=True)


class ResumeCallback(TrainerCallback):
    """TRL resets the counters when training starts; put back the checkpoint's."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    def on_train_begin(self, args, state, control, **kwargs):
        state.global_step, state.episode = self.meta["global_step"], self.meta["episode"]


def save_checkpoint(trainer: StagePPOTrainer, path: Path, state) -> None:
    trainer.accelerator.save_state(str(path / "accelerate"))  # every rank: ZeRO shards, optimizer, RNG
    if trainer.accelerator.is_main_process:
        torch.save(trainer.lr_scheduler.state_dict(), path / "scheduler.pt")
        meta = {"global_step": state.global_step, "episode": state.episode, "kl_coef": trainer.args.kl_coef}
        runs.write_json(path / "meta.json", meta)
    trainer.accelerator.wait_for_everyone()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (meta.json is written last), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_rubric(spec: str | None):
    if not spec:
        return None
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def tokenize_prompts(rows: list[dict], tokenizer, max_length: int) -> tuple[Dataset, int]:
    ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
           for r in rows]  # fmt: skip
    kept = [i for i in ids if len(i) <= max_length]
    return Dataset.from_dict({"input_ids": kept}), len(ids) - len(kept)


def read_reward_stats(config: PPOStageConfig, rm_path: Path) -> dict[str, float]:
    candidates = [Path(config.reward_stats)] if config.reward_stats else [rm_path / "reward_stats.json",
                                                                          rm_path.parent / "reward_stats.json"]  # fmt: skip
    for path in candidates:
        if path.exists():
            return json.loads(path.read_text())
    if config.normalize_rewards:
        raise FileNotFoundError(
            f"normalize_rewards needs the reward model's training statistics, looked in: {[str(p) for p in candidates]}. "
            "Give --reward_stats PATH, or --normalize_rewards false."
        )
    return {"mean": 0.0, "std": 1.0}


def main(config: PPOStageConfig) -> dict[str, Any]:
    state = PartialState()
    stage = runs.StageRun("ppo", config.run, config.runs_dir)

    # step 1. inputs: policy/reference (SFT), reward model, its statistics, prompts; tokenizers must match.
    sft_path = runs.stage_output(config.run, "sft", config.runs_dir, config.sft_model_path)
    rm_path = runs.stage_output(config.run, "rm", config.runs_dir, config.reward_model_path)
    from reward.compat import check_tokenizers_match

    check_tokenizers_match(sft_path, rm_path)
    stats_file = read_reward_stats(config, rm_path)
    tokenizer = AutoTokenizer.from_pretrained(sft_path, padding_side="left")
    with state.main_process_first():
        rows, prompts_path = load_prompts(config.prompts, config.runs_dir, config.num_prompts)
    train_rows, eval_rows = rows[config.eval_prompts :], rows[: config.eval_prompts]
    train_dataset, dropped = tokenize_prompts(train_rows, tokenizer, config.max_prompt_length)
    eval_dataset, _ = tokenize_prompts(eval_rows, tokenizer, config.max_prompt_length)
    rubric = load_rubric(
        config.rubric or ("pipeline.demo_data:house_style_score" if config.prompts == "demo" else None)
    )

    policy = AutoModelForCausalLM.from_pretrained(sft_path)
    ref_policy = None if config.use_lora else AutoModelForCausalLM.from_pretrained(sft_path)
    value_model = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    rollout_stats = RolloutStats()
    mean, std = (stats_file["mean"], stats_file["std"]) if config.normalize_rewards else (0.0, 1.0)
    reward_model = ShapedRewardModel(
        AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1), mean, std,
        config.length_penalty, rollout_stats,
    )  # fmt: skip
    peft_config = None
    if config.use_lora:
        peft_config = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout,
                                  config.lora_target_modules, "CAUSAL_LM")  # fmt: skip
        if config.value_lora:
            add_value_adapters(value_model, config)
    parameters = {"policy_parameters": count_parameters(policy), "value_parameters": count_parameters(value_model),
                  "value_trainable_parameters": count_parameters(value_model, trainable=True)}  # fmt: skip

    # step 2. resume: train only the remaining episodes, on the whole run's learning-rate schedule.
    total_episodes = config.total_episodes
    checkpoint = None
    if config.resume:
        found = list_checkpoints(config.output_dir)
        if not found:
            raise FileNotFoundError(
                f"resume: no checkpoint in {config.output_dir}. Run without RESUME=1 to start anew."
            )
        checkpoint = found[-1]
    tracker = Tracker(config.report_to, config.run, "ppo", stage.dir, runs.config_dict(config), state.is_main_process)
    meta = json.loads((checkpoint / "meta.json").read_text()) if checkpoint else None
    world_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * state.num_processes
    schedule_steps = -(-total_episodes // world_batch)
    if meta:
        config.total_episodes = max(total_episodes - meta["episode"], world_batch)
        config.kl_coef = meta["kl_coef"]

    trainer = StagePPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
        value_model=value_model, train_dataset=train_dataset, eval_dataset=eval_dataset, peft_config=peft_config,
        schedule_steps=schedule_steps, rollout_stats=rollout_stats,
    )  # fmt: skip
    instrument_generation(trainer.accelerator.unwrap_model(trainer.model).policy, rollout_stats, tokenizer, rubric)
    kl_controller = (
        AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon) if config.adaptive_kl else None
    )
    step_callback = PPOStepCallback(rollout_stats, kl_controller)
    # First, so the metrics it adds are in the dict when the W&B/trackio callbacks log it.
    trainer.callback_handler.callbacks.insert(0, step_callback)
    trainer.add_callback(CheckpointCallback(trainer, config))
    if checkpoint:
        trainer.accelerator.load_state(str(checkpoint / "accelerate"))
        trainer.lr_scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt"))
        trainer.add_callback(ResumeCallback(meta))
        if state.is_main_process:
            print(f"[ppo] resuming from {checkpoint} at step {meta['global_step']}, episode {meta['episode']}")

    # step 3. train.
    try:
        trainer.train()
    except torch.OutOfMemoryError as err:
        raise RuntimeError(OOM_ADVICE) from err

    # step 4. save the policy: gathered on every rank (ZeRO-3), written by the main process.
    model_dir, adapter_dir = stage.dir / "model", stage.dir / "adapter"
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    release_zero3_init()
    if state.is_main_process:
        policy_state = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).policy
        unwrapped.save_pretrained(adapter_dir if config.use_lora else model_dir, state_dict=policy_state)
        if not config.use_lora:
            tokenizer.save_pretrained(model_dir)
        del policy_state, unwrapped
    global_step, episodes = trainer.state.global_step, trainer.state.episode
    # The merge loads the base model once more: free the four training models first, or that is the run's peak.
    del trainer, state_dict, policy, ref_policy, value_model, reward_model
    gc.collect()
    if state.is_main_process and config.use_lora and config.merge_lora:
        merge_adapter(sft_path, adapter_dir, model_dir, tokenizer)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    history = step_callback.history
    with open(stage.dir / "history.jsonl", "w") as fh:
        fh.writelines(json.dumps(h) + "\n" for h in history)
    metrics = ppo_metrics(history)
    metrics.update(global_step=global_step, episodes=episodes, prompts_dropped_too_long=dropped,
                   final_kl_coef=config.kl_coef, reward_normalisation={"mean": mean, "std": std}, **parameters)  # fmt: skip
    tracker.summary({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    summary = stage.finish(
        config, metrics=metrics,
        inputs={"sft_model": sft_path, "reward_model": rm_path, "prompts": prompts_path},
        outputs={"model": model_dir, "history": stage.dir / "history.jsonl", "checkpoints": config.output_dir},
        extra={"tracking": tracker.record},
    )  # fmt: skip
    tracker.finish()
    print(
        f"[ppo] done in {runs.format_duration(summary['wall_time_s'])} | {metrics['episodes']} episodes | "
        f"score {metrics.get('score_first', 0):.3f} -> {metrics.get('score_last', 0):.3f} | "
        f"kl {metrics.get('kl_last', 0):.3f} | model: {model_dir}"
    )
    return summary


def add_value_adapters(value_model, config: PPOStageConfig) -> None:
    """LoRA adapters in the value model, in place; its scalar head stays trainable.

    TRL gives the adapter to the policy only and trains the value model in full: with LoRA, the value model's
    gradients and Adam moments (three times its weights) were then most of the memory LoRA was meant to save. The
    head is trained in full because it starts as the reward model's, which scores rewards rather than returns.
    """
    from peft import inject_adapter_in_model

    adapters = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules,
                           "SEQ_CLS", exclude_modules=["score"])  # fmt: skip
    inject_adapter_in_model(adapters, value_model)  # freezes every weight but the adapters'
    value_model.score.requires_grad_(True)


def count_parameters(model: torch.nn.Module, trainable: bool = False) -> int:
    # Under ZeRO-3 a weight is partitioned as it loads: its full size is `ds_numel`.
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if not trainable or p.requires_grad)


def ppo_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Headline figures from the per-step history: first and last steps, and mean phase timings."""
    if not history:
        return {}
    window = max(1, len(history) // 4)  # averages over a quarter of the run smooth out single noisy steps

    def avg(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else None

    first, last = history[:window], history[-window:]
    out = {
        "score_first": avg(first, "objective/scores"),
        "score_last": avg(last, "objective/scores"),
        "rlhf_reward_first": avg(first, "objective/rlhf_reward"),
        "rlhf_reward_last": avg(last, "objective/rlhf_reward"),
        "kl_last": avg(last, "objective/kl"),
        "gold_score_first": avg(first, "rollout/gold_score"),
        "gold_score_last": avg(last, "rollout/gold_score"),
        "response_length_last": avg(last, "rollout/response_length"),
        "eos_rate_last": avg(last, "rollout/eos_rate"),
    }
    for phase in ("generation", "scoring", "optimisation", "step"):
        out[f"timing_{phase}_s_mean"] = avg(history, f"timing/{phase}_s")
    return {k: v for k, v in out.items() if v is not None}


if __name__ == "__main__":
    (stage_config,) = TrlParser((PPOStageConfig,)).parse_args_and_config()
    main(stage_config)
