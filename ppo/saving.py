"""Saving the PPO run: resumable checkpoints and resuming from them, the policy snapshots, and the final policy and
critic. Every process takes part in each save (under ZeRO-3 the weights are gathered collectively); the writers
(``is_writer``) write the files. The formats on disk are ``ppo/checkpoint.py``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pipeline.lib.launch import release_zero3_init
from pipeline.lib.models import save_here
from pipeline.lib.stage import ModelArguments, finish_model, weights_dir
from ppo import checkpoint
from ppo.config import PPOStageConfig
from ppo.context import Context, Progress, Snapshots


def is_writer(config: PPOStageConfig, accelerator: Accelerator) -> bool:
    """Whether this process writes the files: the main one, or each node's with ``save_on_each_node``."""
    return accelerator.is_local_main_process if config.save_on_each_node else accelerator.is_main_process


def part_of(state_dict: dict, prefix: str) -> dict:
    """The weights of one part of ``PolicyAndValue`` (``policy.``, ``value_model.``), under that part's own names."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def full_state_dict(config: PPOStageConfig, accelerator: Accelerator, model: torch.nn.Module) -> dict:
    """The whole model's weights where they are written. Under ZeRO-3 accelerate gathers them on global rank 0 only;
    with ``save_on_each_node`` every node writes, so each weight is gathered on every process in turn."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if not (config.save_on_each_node and plugin is not None and plugin.zero_stage == 3):
        return accelerator.get_state_dict(model)
    import deepspeed

    state = {}
    for name, param in accelerator.unwrap_model(model).named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            state[name] = param.detach().cpu().clone()
    return state


def resume(config: PPOStageConfig, accelerator: Accelerator, settings: dict[str, Any]) -> Progress:
    """The latest checkpoint's weights, optimizer, schedule and KL coefficient loaded; where it left the run."""
    assert config.output_dir is not None  # parse() filled it in
    path, meta, history = checkpoint.latest(config.output_dir, settings)
    accelerator.load_state(str(path / "accelerate"))
    step = meta["global_step"]
    accelerator.print(f"[ppo] resuming from {path} at step {step}, episode {meta['episode']}")
    resumed_at = [*meta["resumed_at"], step]
    return Progress(step, meta["episode"], history[:step], resumed_at, meta.get("elapsed_s", 0.0), settings=settings)


def open_snapshots(
    config: PPOStageConfig,
    accelerator: Accelerator,
    model_args: ModelArguments,
    directory: Path,
    step: int,
    num_steps: int,
) -> Snapshots:
    """Where the snapshots of a ``num_steps`` run go and after which steps, with those a resume from ``step`` keeps."""
    written = checkpoint.keep_snapshots(directory, step) if is_writer(config, accelerator) else []
    steps = checkpoint.snapshot_steps(num_steps, config.snapshots)
    return Snapshots(directory, steps, model_args, written)


def save_checkpoint(ctx: Context, elapsed: float) -> None:
    """A resumable checkpoint of this step; ``elapsed``, the training seconds so far, is where a resumed run's count
    of them goes on from."""
    config, progress = ctx.config, ctx.progress
    assert config.output_dir is not None  # parse() filled it in
    meta = {
        "global_step": progress.step,
        "episode": progress.episode,
        "resumed_at": progress.resumed_at,
        "elapsed_s": elapsed,
        "settings": progress.settings,
    }
    path = Path(config.output_dir) / f"checkpoint-{progress.step}"
    checkpoint.save(ctx.accelerator, path, meta, progress.history, config.checkpoints_to_keep)


def save_snapshot(ctx: Context) -> None:
    """The policy's weights at this step, as ``save_policy`` writes them (its adapters with LoRA), listed in the
    index; every process takes part (ZeRO-3 gathers). ``finish_snapshots`` makes them plain models."""
    accelerator, snapshots, progress = ctx.accelerator, ctx.snapshots, ctx.progress
    state_dict = full_state_dict(ctx.config, accelerator, ctx.models.model)
    if is_writer(ctx.config, accelerator):
        policy = accelerator.unwrap_model(ctx.models.model).policy
        folder = checkpoint.snapshot_dir(snapshots.dir, progress.step)
        save_here(policy, weights_dir(folder, snapshots.model_args), state_dict=part_of(state_dict, "policy."))
        snapshots.written = checkpoint.add_snapshot(snapshots.dir, snapshots.written, progress.step, progress.episode)
    del state_dict
    accelerator.wait_for_everyone()


def save_policy(ctx: Context, stage_dir: Path, policy_dir: Path) -> None:
    """The policy's weights (its adapters with LoRA) and the critic; every process takes part (ZeRO-3 gathers)."""
    config, accelerator, models = ctx.config, ctx.accelerator, ctx.models
    state_dict = full_state_dict(config, accelerator, models.model)
    release_zero3_init()
    if is_writer(config, accelerator):
        unwrapped = accelerator.unwrap_model(models.model)
        save_here(unwrapped.policy, policy_dir, state_dict=part_of(state_dict, "policy."))
        # The critic too, to continue from or to inspect (with LoRA: its adapters and head included).
        save_here(unwrapped.value_model, stage_dir / "value_model", state_dict=part_of(state_dict, "value_model."))
    accelerator.wait_for_everyone()


def finish_snapshots(snapshots: Snapshots, sft_path: Path, tokenizer, progress: Progress) -> None:
    """Each snapshot a model folder as ``model/`` is (LoRA merged into the SFT model, the tokenizer beside it), once
    the training models are freed, as the final policy's merge is; then the index of the finished run."""
    for entry in snapshots.written:
        folder = checkpoint.snapshot_dir(snapshots.dir, entry["step"])
        finish_model(folder, snapshots.model_args, sft_path, tokenizer)
    checkpoint.close_snapshots(snapshots.dir, snapshots.written, progress.step, progress.episode)
