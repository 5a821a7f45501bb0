"""Stage 4, PPO: ``make ppo`` (``accelerate launch -m ppo.train --config configs/ppo.yaml``).

The policy (from the run's SFT model) is optimised against one or more reward models, with a critic initialised from
the reward model, a per-token KL penalty to the reference (the SFT model, or the policy with its LoRA adapter off),
GAE and PPO's clipped losses. Each step: generate rollouts; score them; compute reference log-probs and values;
rewards and advantages; PPO epochs over mini-batches. This file is the recipe; it composes ``ppo/setup.py`` (the
models and prompts), ``ppo/phases.py`` (the phases of a step), ``ppo/metrics.py`` and ``ppo/saving.py``
(checkpoints, snapshots, the final policy); the math is in ``ppo/algorithm.py``.
Checked against TRL 1.12's PPOTrainer on the same work (``make bench``, case ``ppo``; see the README).

Writes ``runs/<run>/ppo/``: ``model/`` (loads with AutoModelForCausalLM; LoRA merged unless ``merge_lora: false``),
``checkpoints/`` (resume with ``RESUME=1``: the same prompts, samples and updates as an uninterrupted run),
``snapshots/`` (the policy at ``snapshots`` evenly spaced steps, saved as ``model/`` is, for the evaluation),
``history.jsonl`` (every step since the run began, across resumes), config.yaml and summary.json.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from pipeline.lib.errors import OutOfMemory, exit_with
from pipeline.lib.launch import configure_cpu_deepspeed
from pipeline.lib.rubric import load_rubric
from pipeline.lib.stage import ModelArguments, RunArguments, Stage, parse
from pipeline.lib.tables import write_jsonl
from ppo import checkpoint
from ppo.config import PPOStageConfig
from ppo.context import Context, Progress
from ppo.metrics import log_samples, ppo_metrics, step_metrics
from ppo.phases import Timer, compute_advantages, optimise, rollout, step_prompts
from ppo.saving import finish_snapshots, is_writer, open_snapshots, resume, save_checkpoint, save_policy, save_snapshot
from ppo.setup import build_models, load_ppo_prompts, resolve_inputs, total_steps

OOM_ADVICE = (
    "Out of memory. To use less: LoRA (--use_lora true: no separate reference model), ZeRO-3 (make ppo ZERO=3), "
    "a smaller rollout (--per_device_train_batch_size / --gradient_accumulation_steps), a shorter --response_length, "
    "or a smaller --local_rollout_forward_batch_size."
)


def train_step(ctx: Context) -> dict[str, float]:
    """One PPO step, its metrics, the KL coefficient's update, logging, the snapshot and the checkpoint."""
    config, models, progress = ctx.config, ctx.models, ctx.progress
    step, world_batch, timer = progress.step, config.local_batch_size * ctx.accelerator.num_processes, Timer()
    with timer("step"):
        # phases 1-3. generate, score, reference log-probs and values.
        batch = rollout(ctx, *step_prompts(ctx), timer)
        # phase 4. rewards and advantages.
        with timer("advantages"):
            adv = compute_advantages(ctx, batch)
        # phase 5. PPO epochs over mini-batches.
        with timer("optimisation"):
            stats = optimise(ctx, batch, adv)
        models.scheduler.step()
        gc.collect()  # generation leaves reference cycles; collected each step, they never add up to a peak
    progress.step, progress.episode = step + 1, progress.episode + world_batch
    metrics = step_metrics(ctx, batch, adv, stats, timer)
    elapsed = progress.elapsed()
    metrics.update(
        episode=progress.episode,
        lr=models.scheduler.get_last_lr()[0],
        elapsed_s=elapsed,
        eps=progress.episode / max(elapsed, 1e-9),
    )
    models.kl.update(metrics["objective/kl"], n_steps=world_batch)  # takes effect from the next step
    progress.history.append({"step": progress.step, **metrics})
    if progress.step % config.logging_steps == 0:
        ctx.tracker.log({f"train/{k}": v for k, v in metrics.items()}, step=progress.step)
    every = max(1, ctx.num_steps // config.num_sample_generations) if config.num_sample_generations else 0
    if every and step % every == 0:
        log_samples(ctx)
    # The snapshot before the checkpoint: a resume from this step then finds it listed, and never misses it.
    if progress.step in ctx.snapshots.steps:
        save_snapshot(ctx)
    # None after the last step: the model is saved then.
    if config.checkpoint_steps and progress.step % config.checkpoint_steps == 0 and progress.step < ctx.num_steps:
        save_checkpoint(ctx, elapsed)
    return metrics


def train(ctx: Context) -> None:
    """Steps until ``total_episodes``, from where the run's progress is, with a progress bar."""
    from tqdm.auto import tqdm

    accelerator, progress = ctx.accelerator, ctx.progress
    bar = tqdm(
        total=ctx.num_steps,
        initial=progress.step,
        desc="ppo",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    try:
        while progress.step < ctx.num_steps:
            metrics = train_step(ctx)
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
    except torch.OutOfMemoryError as err:
        raise OutOfMemory(OOM_ADVICE) from err
    bar.close()


def main(run: RunArguments, model_args: ModelArguments, config: PPOStageConfig) -> dict[str, Any]:
    configure_cpu_deepspeed()  # gloo for DeepSpeed on CPU, before accelerate picks a backend
    accelerator = Accelerator(
        gradient_accumulation_steps=config.micro_batches_per_mini_batch,
        mixed_precision="bf16" if config.bf16 else "no",
    )
    stage = Stage(
        "ppo", run.run, run.runs_dir, [run, model_args, config], config.report_to, accelerator.is_main_process
    )
    set_seed(config.seed)

    # step 1. inputs: the policy (SFT), the reward models and their statistics, the prompts; then the models.
    sft_path, rm_paths = resolve_inputs(run, model_args, config)
    tokenizer = AutoTokenizer.from_pretrained(sft_path, padding_side="left")
    prompts = load_ppo_prompts(config, tokenizer)
    rubric = load_rubric(config.rubric)
    if rubric is not None:  # said out loud: a rubric written for other prompts would score these silently
        accelerator.print(f"[ppo] gold rubric {config.rubric} scores every rollout (rollout/gold_score)")
    num_steps = total_steps(config, accelerator.num_processes)
    models = build_models(config, model_args, accelerator, sft_path, rm_paths, tokenizer, num_steps)

    # step 2. resume: the latest checkpoint's weights, optimizer, schedule, KL coefficient, history and snapshots.
    settings = checkpoint.trajectory_settings(run, model_args, config)
    progress = resume(config, accelerator, settings) if run.resume else Progress(settings=settings)
    snapshots = open_snapshots(config, accelerator, model_args, stage.dir / "snapshots", progress.step, num_steps)
    ctx = Context(
        config, accelerator, tokenizer, models, prompts, rubric, stage.tracker, progress, snapshots, num_steps
    )

    # step 3. train: each step generates, scores and learns from processes x local_batch_size rollouts.
    train(ctx)

    # step 4. save the policy and the critic (gathered under ZeRO-3), then free the training models.
    save_policy(ctx, stage.dir, stage.weights_dir(model_args))
    extra = {"final_kl_coef": models.kl.value, "prompts_dropped_too_long": prompts.dropped, **models.figures()}
    notes = models.notes
    del ctx, models  # the LoRA merge loads the base model once more: without this, that would be the run's peak
    accelerator.free_memory()
    gc.collect()
    if is_writer(config, accelerator):
        stage.finish_model(model_args, sft_path, tokenizer)
        finish_snapshots(snapshots, sft_path, tokenizer, progress)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}

    # step 5. finish: the history and summary of every step since the run began, and the tracker.
    write_jsonl(stage.dir / "history.jsonl", progress.history)
    assert config.output_dir is not None  # parse() filled it in
    metrics = {
        **ppo_metrics(progress.history),
        "global_step": progress.step,
        "episodes": progress.episode,
        "resumed_at_steps": progress.resumed_at,
        "gold_rubric": config.rubric,
        **extra,
    }
    inputs = {"sft_model": sft_path, **{f"reward_model_{i}": p for i, p in enumerate(rm_paths)}}
    outputs = {name: stage.dir / name for name in ("model", "value_model", "snapshots")}
    return stage.finish(
        metrics=metrics,
        inputs={**inputs, "prompts": prompts.path},
        outputs={**outputs, "history": stage.dir / "history.jsonl", "checkpoints": config.output_dir},
        extra={"notes": notes},
        headline=f"{progress.episode} episodes | score {metrics.get('score_first', 0):.3f} -> "
        f"{metrics.get('score_last', 0):.3f} | kl {metrics.get('kl_last', 0):.3f}",
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse(PPOStageConfig, "ppo")))
