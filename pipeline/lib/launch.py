"""Launching a stage, the one source of the launch rules: which accelerate config, how many processes, threads each.

``python -m pipeline.lib.launch --nproc 2 --zero 3 -m ppo.train --config configs/ppo.yaml`` runs
``accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 2 --num_cpu_threads_per_process T``
with the module; the Makefile's stage targets, the conductor and the bench all build their commands here. Below,
the process-group set-up a stage does once launched.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.lib.errors import relay

ACCELERATE_CONFIGS = Path(
    "configs/accelerate"
)  # relative, as the DeepSpeed files named inside them: run from the repository


def accelerate_config(nproc: int, zero: int) -> Path:
    """``configs/accelerate/``: single (one process), ddp (several) or zero2 / zero3 (DeepSpeed)."""
    if zero not in (0, 2, 3):
        raise ValueError(f"zero must be 0 (off), 2 or 3, got {zero}.")
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}.")
    name = f"zero{zero}" if zero else ("single" if nproc == 1 else "ddp")
    return ACCELERATE_CONFIGS / f"{name}.yaml"


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of ``nproc`` processes on this machine: ``OMP_NUM_THREADS`` when set, else its cores
    shared out.

    ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` unless told otherwise, so on a CPU machine torch in a single
    process used one core of them all (``make sft`` ran at 0.58x the samples/s of two threads on 2 cores).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, len(os.sched_getaffinity(0)) // max(1, nproc))


def accelerate_arguments(
    nproc: int = 1, zero: int = 0, config_file: str | Path | None = None, threads: int | None = None
) -> list[str]:
    """``accelerate launch``'s own arguments; ``config_file`` replaces the one ``nproc`` and ``zero`` pick."""
    return [
        "--quiet",  # a failed stage says what went wrong itself (pipeline.lib.errors), without accelerate's traceback
        "--config_file",
        str(config_file or accelerate_config(nproc, zero)),
        "--num_processes",
        str(nproc),
        "--num_cpu_threads_per_process",
        str(threads or threads_per_process(nproc)),
    ]


def command(
    module: str, nproc: int = 1, zero: int = 0, config_file: str | Path | None = None, python: str = sys.executable
) -> list[str]:
    """The command that runs ``python -m module`` under ``accelerate launch``; the stage's flags go after it."""
    launch = accelerate_arguments(nproc, zero, config_file)
    return [python, "-m", "accelerate.commands.launch", *launch, "-m", module]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-m" not in argv[:-1]:
        raise SystemExit("usage: python -m pipeline.lib.launch [--nproc N] [--zero 0|2|3] -m MODULE [stage flags]")
    at = argv.index("-m")
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.lib.launch",
        description="Run a stage under accelerate launch with the project's launch rules.",
        allow_abbrev=False,
    )
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this machine")
    parser.add_argument("--zero", type=int, default=0, help="DeepSpeed ZeRO stage: 0 (off), 2 or 3")
    parser.add_argument("--accelerate_config", default=None, help="an accelerate YAML instead of the one picked")
    args = parser.parse_args(argv[:at])
    cmd = command(argv[at + 1], args.nproc, args.zero, args.accelerate_config) + argv[at + 2 :]
    sys.exit(relay(cmd))


# --- inside a launched stage -------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    main()
