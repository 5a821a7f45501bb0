"""A stage's log: the known-harmless warnings are filtered, others still show, and a Trainer draws one bar."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.lib.quiet import log_line

ROOT = Path(__file__).parents[1]


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""},
    )


def test_log_line_is_one_readable_line():
    logs = {"loss": 7.82713, "grad_norm": 2.0, "learning_rate": 0.00045, "epoch": 0.0885, "total_flos": 1e12}
    assert log_line(logs, 10, 226) == "step 10/226  loss 7.827  grad_norm 2  learning_rate 0.00045  epoch 0.0885"
    assert log_line({"eval_loss": 8.2941, "epoch": 0}, 0, 226) == "step 0/226  eval_loss 8.294  epoch 0"


def test_known_harmless_warnings_are_filtered_and_others_still_show(tmp_path):
    out = run_python(
        """
        import warnings
        from pipeline.lib.quiet import quiet_libraries
        quiet_libraries()
        import torch
        from deepspeed.accelerator import get_accelerator
        from deepspeed.utils import logger
        get_accelerator()
        logger.warning("another DeepSpeed warning")
        for _ in torch.utils.data.DataLoader(list(range(4)), batch_size=2, pin_memory=True):
            pass
        warnings.warn("another UserWarning")
        """,
        tmp_path,
    )
    text = out.stdout + out.stderr  # DeepSpeed logs to stdout
    assert "Setting accelerator to CPU" not in text
    assert "pin_memory" not in text
    assert "another DeepSpeed warning" in text
    assert "another UserWarning" in text


def test_a_trainer_draws_one_bar_with_its_logs_as_lines(tmp_path):
    out = run_python(
        f"""
        import torch
        from transformers import Trainer, TrainingArguments
        from pipeline.lib.quiet import one_progress_bar, quiet_libraries

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Linear(1, 1)

            def forward(self, x, labels):
                return {{"loss": ((self.w(x) - labels) ** 2).mean()}}

        rows = [{{"x": [float(i)], "labels": [2.0 * i]}} for i in range(16)]
        args = TrainingArguments(
            output_dir={str(tmp_path / "out")!r}, max_steps=4, per_device_train_batch_size=4, logging_steps=2,
            eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4, report_to=[], save_strategy="no",
            use_cpu=True,
        )
        quiet_libraries()
        trainer = Trainer(Tiny(), args, train_dataset=rows, eval_dataset=rows)
        one_progress_bar(trainer)
        trainer.train()
        """,
        tmp_path,
    )
    text = out.stdout + out.stderr
    # On the bar's own stream, in step with it (stdout is block-buffered when it is not a terminal).
    assert "step 2/4  loss " in out.stderr and "step 4/4  eval_loss " in out.stderr
    assert "{'loss'" not in text and "{'eval_loss'" not in text
    # One bar, counting to 4 training steps; the evaluation's 4-batch bar never appears beside it.
    assert text.count("0/4 [") == 1
