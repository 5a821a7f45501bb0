"""Plain TRL SFT, the baseline of the SFT benchmark: ``python -m bench.baselines.sft_plain --model_name_or_path P
--train_file F [SFTConfig flags]``.

What a TRL user would write (as ``trl/scripts/sft.py``): load the model and tokenizer, load a JSON-lines file of
prompt/completion rows, ``SFTTrainer(...).train()``, save. The benchmark passes it the same training flags as the
project's stage.
"""

from __future__ import annotations

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer, TrlParser

from bench.baselines.arguments import ScriptArguments, train_and_save


def main(script: ScriptArguments, config: SFTConfig) -> None:
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, dtype=torch.float32)
    dataset = load_dataset("json", data_files=script.train_file, split="train").select_columns(
        ["prompt", "completion"]
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    train_and_save(trainer, config.output_dir)


if __name__ == "__main__":
    main(*TrlParser((ScriptArguments, SFTConfig)).parse_args_and_config())
