"""The script arguments of the plain TRL SFT and reward-model baselines (``sft_plain``, ``rm_plain``), besides
TRL's own config: the start model and a JSON-lines training file, as TRL's example scripts take them; and how
both end."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "A local model folder or hub id."})
    train_file: str = field(
        metadata={"help": "JSON lines: prompt/completion rows (SFT) or prompt/chosen/rejected rows (reward model)."}
    )


def train_and_save(trainer, output_dir: str) -> None:
    """Train, save, and let the trackers and the process group finish, as TRL's own scripts end."""
    trainer.train()
    trainer.save_model(output_dir)
    trainer.end()
