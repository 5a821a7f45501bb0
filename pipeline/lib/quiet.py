"""A quiet, readable stage log: the known-harmless library warnings filtered, and one progress bar per stage.

Each filter names one message, so a warning that matters still shows. ``quiet_libraries`` runs when a stage starts
(``pipeline.lib.stage.Stage``); the Trainer-based stages also call ``one_progress_bar``, since Transformers' progress
callback draws a second bar for every evaluation and prints its logs as Python dicts.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from tqdm.auto import tqdm

# Raised on every machine without CUDA: DeepSpeed says it picked the CPU, once per process, at warning level.
DEEPSPEED_CPU = "Setting accelerator to CPU"
# Raised by torch's DataLoader on a CPU-only machine, where Transformers' default pin_memory=True does nothing.
PIN_MEMORY = r"'pin_memory' argument is set as true but no accelerator is found"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_libraries() -> None:
    """Filter the known-harmless messages and the libraries' per-step bars (loading weights, dataset maps)."""
    warnings.filterwarnings("ignore", message=PIN_MEMORY, category=UserWarning)
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropMessage) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_DropMessage(DEEPSPEED_CPU))
    # The environment covers a library not imported yet (and the processes a stage starts); the calls, one that is.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def log_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """A Trainer's log as one line: ``step 10/226  loss 7.827  grad_norm 2.028  learning_rate 0.00045``."""
    fields = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in logs.items()]
    return f"step {step}/{max_steps}  " + "  ".join(field for field in fields if not field.startswith("total_flos"))


def one_progress_bar(trainer) -> None:
    """Replace the Trainer's progress callback: one bar, evaluation inside it, each log one line above it."""
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    class StageProgress(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs:
                # On the bar's stream: stdout is block-buffered when it is not a terminal, and a launched process
                # may end without flushing it, so its lines would come late or never.
                self.bar.write(log_line(logs, state.global_step, state.max_steps), file=self.bar.fp)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StageProgress())
