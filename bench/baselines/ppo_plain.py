"""Plain TRL 1.12 PPO, the baseline of the PPO benchmark: ``python -m bench.baselines.ppo_plain --prompts_file F
--sft_model_path P --reward_model_path R [PPOConfig flags]``.

What a TRL user would write (as TRL's ``examples/scripts/ppo/ppo.py``): the policy and its reference from the SFT
model, the value and reward models from the reward model, prompts tokenized with the chat template and left-padded,
``PPOTrainer(...).train()``, save. The benchmark passes it the same PPO flags as the project's stage, and the same
prompts (the first ``eval_prompts`` are held out, as the stage does).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import TrlParser  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402


@dataclass
class ScriptArguments:
    prompts_file: str = field(metadata={"help": "JSON lines with a 'prompt' column (a list of chat messages)."})
    num_prompts: int | None = None
    eval_prompts: int = 16
    max_prompt_length: int = 256


def tokenize(rows: list[dict], tokenizer, max_length: int) -> Dataset:
    ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
           for r in rows]  # fmt: skip
    return Dataset.from_dict({"input_ids": [i for i in ids if len(i) <= max_length]})


def main(script: ScriptArguments, config: PPOConfig) -> None:
    with open(script.prompts_file) as fh:
        rows = [json.loads(line) for line in fh if line.strip()][: script.num_prompts]
    tokenizer = AutoTokenizer.from_pretrained(config.sft_model_path, padding_side="left")
    train = tokenize(rows[script.eval_prompts :], tokenizer, script.max_prompt_length)
    evaluation = tokenize(rows[: script.eval_prompts], tokenizer, script.max_prompt_length)

    policy = AutoModelForCausalLM.from_pretrained(config.sft_model_path)
    ref_policy = AutoModelForCausalLM.from_pretrained(config.sft_model_path)
    value_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path, num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path, num_labels=1)
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
        value_model=value_model, train_dataset=train, eval_dataset=evaluation,
    )  # fmt: skip
    trainer.train()
    trainer.save_model(config.output_dir)


if __name__ == "__main__":
    main(*TrlParser((ScriptArguments, PPOConfig)).parse_args_and_config())
