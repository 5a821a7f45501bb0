"""Plain TRL reward modelling, the baseline of the reward-model benchmark: ``python -m bench.baselines.rm_plain
--model_name_or_path P --train_file F [RewardConfig flags]``.

What a TRL user would write (as ``trl/scripts/reward.py``): the model with a scalar head, a JSON-lines file of
``{prompt, chosen, rejected}`` conversations, ``RewardTrainer(...).train()``, save. The benchmark passes it the same
training flags as the project's stage.
"""

from __future__ import annotations

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer, TrlParser

from bench.baselines.arguments import ScriptArguments, train_and_save


def main(script: ScriptArguments, config: RewardConfig) -> None:
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    # The score head is initialised here, before RewardTrainer seeds: seed first, as TRL does for a model it loads.
    set_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        script.model_name_or_path, num_labels=1, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = load_dataset("json", data_files=script.train_file, split="train")
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    train_and_save(trainer, config.output_dir)


if __name__ == "__main__":
    main(*TrlParser((ScriptArguments, RewardConfig)).parse_args_and_config())
