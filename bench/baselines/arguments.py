"""The script arguments of the plain TRL SFT and reward-model baselines (``sft_plain``, ``rm_plain``), besides
TRL's own config: the start model and a JSON-lines training file, as TRL's example scripts take them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "A local model folder or hub id."})
    train_file: str = field(
        metadata={"help": "JSON lines: prompt/completion rows (SFT) or prompt/chosen/rejected rows (reward model)."}
    )
