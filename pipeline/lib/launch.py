"""Process-group set-up shared by the stages."""

from __future__ import annotations

import os


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of ``nproc`` processes on this machine: ``OMP_NUM_THREADS`` when set, else its cores
    shared out.

    ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` unless told otherwise, so on a CPU machine torch in a single
    process used one core of them all (``make sft`` ran at 0.58x the samples/s of two threads on 2 cores).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, len(os.sched_getaffinity(0)) // max(1, nproc))


def fill_run_defaults(config, stage: str) -> None:
    """What every training stage's config fills in before it is validated: checkpoints under
    ``runs/<run>/<stage>/``, the tracking run's name, and bf16 where the GPU has it."""
    from pipeline.lib import runs

    if config.output_dir is None:
        config.output_dir = str(runs.stage_dir(config.run, stage, config.runs_dir) / "checkpoints")
    if config.run_name is None:
        config.run_name = f"{config.run}-{stage}"
    if config.bf16 is None:
        import torch

        config.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fill_training_defaults(config, stage: str) -> None:
    """``fill_run_defaults`` for a stage on transformers' Trainer, which also needs gloo for DeepSpeed on CPU."""
    fill_run_defaults(config, stage)
    if configure_cpu_deepspeed():
        config.accelerator_config = {**(config.accelerator_config or {}), "use_configured_state": True}


def configure_cpu_deepspeed() -> bool:
    """Give accelerate the gloo backend when DeepSpeed runs several processes on a machine without GPUs.

    accelerate 1.15 finds no backend there, so it reports one process and makes every rank the main one (all of them
    would write the outputs). DeepSpeed's CPU accelerator talks gloo, so we configure the state with it up front; the
    caller then sets ``accelerator_config.use_configured_state`` so the Trainer keeps this state. Returns whether it
    did so. On GPU machines it does nothing.
    """
    if (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true"
        or int(os.environ.get("WORLD_SIZE", 1)) < 2
    ):
        return False
    import torch

    if torch.cuda.is_available():
        return False
    from accelerate import PartialState

    PartialState(backend="gloo")
    return True


def release_zero3_init() -> None:
    """Load models normally again after a ZeRO-3 run.

    While a ZeRO-3 config is registered, every ``from_pretrained`` builds the model inside ``deepspeed.zero.Init``,
    which partitions (and broadcasts) across all ranks; a later main-process-only load (merging LoRA, sampling) would
    wait for ranks that have finished. The trained model is already gathered and saved by then.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
