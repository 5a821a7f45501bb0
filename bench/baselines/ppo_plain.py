"""Plain TRL 1.12 PPO, the baseline (the oracle) of the PPO benchmark: ``python -m bench.baselines.ppo_plain
--prompts_file F --sft_model_path P --reward_model_path R [--rubric module:function] [PPOConfig flags]``.

What a TRL user would write (as TRL's ``examples/scripts/ppo/ppo.py``): the policy and its reference from the SFT
model, the value and reward models from the reward model, prompts tokenized with the chat template and left-padded,
``PPOTrainer(...).train()``, save. The benchmark passes it the same PPO flags as the project's stage, and the same
prompts (the first ``eval_prompts`` are held out, as the stage does).

Measurement only, on top: ``<output_dir>/history.jsonl`` (or ``--history``), one row per step with TRL's logged
metrics, ``elapsed_s`` (seconds since training began, at the end of the step) and, with ``--rubric``, the gold
rubric's mean score of the step's rollouts (``rollout/gold_score``). The rollouts' token ids are only copied during
training; decoding and scoring them waits until training has ended, so the measured steps do no extra work.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

# The bench runs it with TRL_EXPERIMENTAL_SILENCE=1 (bench.core.CHILD_ENV): trl.experimental warns on import.
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)
from trl import TrlParser
from trl.experimental.ppo import PPOConfig, PPOTrainer


@dataclass
class ScriptArguments:
    prompts_file: str = field(metadata={"help": "JSON lines with a 'prompt' column (a list of chat messages)."})
    num_prompts: int | None = None
    eval_prompts: int = 16
    max_prompt_length: int = 256
    rubric: str | None = field(default=None, metadata={"help": "module:function(prompt, response) -> gold score."})
    history: str | None = field(default=None, metadata={"help": "Default: <output_dir>/history.jsonl."})


def tokenize(rows: list[dict], tokenizer, max_length: int) -> Dataset:
    ids = [
        tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        for r in rows
    ]
    return Dataset.from_dict({"input_ids": [i for i in ids if len(i) <= max_length]})


def last_user_message(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])


class StepHistory(TrainerCallback):
    """The end time of every step, and the rollouts (prompt ids, response ids) generated during it."""

    def __init__(self, policy):
        self.t0 = time.perf_counter()
        self.ends: list[float] = []
        self.rollouts: list[list[tuple[list[int], list[int]]]] = []
        self.pending: list[tuple[list[int], list[int]]] = []
        inner = policy.generate

        def generate(*args, **kwargs):  # an instance attribute: TRL's rollouts call policy.generate
            output = inner(*args, **kwargs)
            mask, context = kwargs["attention_mask"].bool(), kwargs["input_ids"].shape[1]
            for ids, row_mask, response in zip(
                kwargs["input_ids"].cpu(), mask.cpu(), output.sequences[:, context:].cpu(), strict=True
            ):
                self.pending.append((ids[row_mask].tolist(), response.tolist()))
            return output

        policy.generate = generate

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter() - self.t0)
        self.rollouts.append(self.pending)
        self.pending = []

    def rows(self, log_history: list[dict], tokenizer, prompts: dict[tuple[int, ...], str], rubric) -> list[dict]:
        logged = {entry["step"]: entry for entry in log_history if "objective/scores" in entry}
        out = []
        for step, (elapsed, rollouts) in enumerate(zip(self.ends, self.rollouts, strict=True), start=1):
            row = {**logged.get(step, {}), "step": step, "elapsed_s": elapsed}
            if rubric is not None and rollouts:
                # As the stage scores a rollout: the prompt's last user message and the decoded response.
                gold = [
                    rubric(
                        prompts.get(tuple(q)) or tokenizer.decode(q, skip_special_tokens=True),
                        tokenizer.decode(r, skip_special_tokens=True),
                    )
                    for q, r in rollouts
                ]
                row["rollout/gold_score"] = sum(gold) / len(gold)
            out.append(row)
        return out


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
    history = StepHistory(policy)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train,
        eval_dataset=evaluation,
        callbacks=[history],
    )
    trainer.train()

    rubric = None
    if script.rubric:
        module, _, name = script.rubric.partition(":")
        rubric = getattr(importlib.import_module(module), name)
    prompts = {
        tuple(
            tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        ): last_user_message(r["prompt"])
        for r in rows
    }
    path = Path(script.history or Path(config.output_dir) / "history.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.writelines(
            json.dumps(r) + "\n" for r in history.rows(trainer.state.log_history, tokenizer, prompts, rubric)
        )
    trainer.save_model(config.output_dir)


if __name__ == "__main__":
    main(*TrlParser((ScriptArguments, PPOConfig)).parse_args_and_config())
