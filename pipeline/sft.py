"""Stage 1, supervised fine-tuning: ``make sft`` (``accelerate launch -m pipeline.sft --config configs/sft.yaml``).

Reads prompt/completion data (``dataset``, ``eval_dataset``), fine-tunes the base model with TRL's
``SFTTrainer`` (full or LoRA, loss on completions only), evaluates every ``eval_steps`` with early stopping on the
eval loss, and writes into ``runs/<run>/sft/``: the model (``model/``, loads with ``AutoModelForCausalLM``),
checkpoints, greedy samples on held-out prompts (``samples.jsonl``), ``config.yaml`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from pipeline.lib import runs
from pipeline.lib.errors import exit_with
from pipeline.lib.launch import release_zero3_init
from pipeline.lib.models import check_model_source
from pipeline.lib.prompts import load_prompts, user_message
from pipeline.lib.quiet import one_progress_bar
from pipeline.lib.sft_data import load_sft_dataset
from pipeline.lib.stage import ModelArguments, RunArguments, Stage, TrainerDefaults, parse, trainer_figures
from pipeline.lib.tables import write_jsonl


@dataclass
class SFTStageConfig(TrainerDefaults, SFTConfig):  # type: ignore[misc]  # the overridden field types, see TrainerDefaults
    """Everything ``SFTConfig`` (and so ``TrainingArguments``) takes, plus the stage's own settings below. The run
    and the start model are ``pipeline.lib.stage.RunArguments`` and ``ModelArguments``."""

    dataset: str | None = field(
        default=None, metadata={"help": "Training data: a jsonl/json/csv/parquet file or a `datasets` folder."}
    )
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Eval file; default: eval_fraction of `dataset`."}
    )
    eval_fraction: float = field(default=0.05, metadata={"help": "Share of `dataset` held out when no eval file."})
    sample_prompts: str | None = field(
        default=None, metadata={"help": "Prompts to sample at the end; default: the eval data's first num_samples."}
    )
    dedupe: bool = field(default=False, metadata={"help": "Drop exact duplicate examples."})
    scrub_pii: bool = field(default=False, metadata={"help": "Replace e-mail addresses and phone numbers."})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after this many evaluations without a better eval loss (0: off)."}
    )
    num_samples: int = field(default=8, metadata={"help": "Greedy samples on held-out prompts saved at the end."})
    sample_max_new_tokens: int = 160
    # loss_type stays "nll" (configs/sft.yaml says so): cross-entropy through TRL's fused LM head, in tiles without
    # the full logits; "chunked_nll" is now an alias of it.

    def __post_init__(self):
        super().__post_init__()
        if not self.dataset:
            raise ValueError("Set dataset: the training data (a jsonl/json/csv/parquet file or a `datasets` folder).")
        if self.early_stopping_patience and not (self.load_best_model_at_end and self.eval_strategy != "no"):
            raise ValueError(
                "early_stopping_patience needs evaluation to pick the best model: set eval_strategy: steps, "
                "load_best_model_at_end: true (and save_steps a multiple of eval_steps), or early_stopping_patience: 0."
            )
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}.")


def load_data(config: SFTStageConfig) -> tuple[Any, Any, list, dict[str, Any], dict[str, str]]:
    """Train and eval datasets, held-out prompts for samples, data stats, and the input paths to record."""
    assert config.dataset is not None  # __post_init__ refused a config without one
    train, train_stats = load_sft_dataset(config.dataset, dedupe=config.dedupe, scrub=config.scrub_pii)
    stats = {"train": train_stats.as_dict()}
    if config.eval_dataset is not None:
        evaluation, eval_stats = load_sft_dataset(config.eval_dataset, dedupe=config.dedupe, scrub=config.scrub_pii)
        stats["eval"] = eval_stats.as_dict()
    else:
        split = train.train_test_split(test_size=config.eval_fraction, seed=config.seed)
        train, evaluation = split["train"], split["test"]
    if config.sample_prompts:
        sample_prompts = [row["prompt"] for row in load_prompts(config.sample_prompts, config.num_samples)]
    else:
        sample_prompts = [
            _prompt_of(row) for row in evaluation.select(range(min(config.num_samples, len(evaluation))))
        ]
    inputs = {"train_data": config.dataset} | ({"eval_data": config.eval_dataset} if config.eval_dataset else {})
    return train, evaluation, sample_prompts, stats, inputs


def _prompt_of(row: dict[str, Any]) -> str | list[dict[str, str]]:
    """The prompt part of an example, to sample a completion for it."""
    if "prompt" in row:
        return row["prompt"]
    if "messages" in row:
        last_assistant = max(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
        return row["messages"][:last_assistant]
    return row["text"].split("\n")[0]


def generate_samples(model_dir: Path, prompts: list, max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy completions from the saved model, loaded fresh with plain transformers."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in prompts
    ]
    samples = []
    for start in range(0, len(texts), 8):
        batch = tokenizer(texts[start : start + 8], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(model.device)
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        for i, ids in enumerate(out[:, batch["input_ids"].shape[1] :]):
            prompt = prompts[start + i]
            samples.append(
                {
                    "prompt": user_message(prompt) if isinstance(prompt, list) else prompt,
                    "completion": tokenizer.decode(ids, skip_special_tokens=True),
                    "ended_with_eos": bool((ids == tokenizer.eos_token_id).any()),
                }
            )
    return samples


class PackedRowsCollator:
    """A BFD-packed batch kept as rows, for attention without FlashAttention (SDPA or eager, as on a CPU).

    TRL's padding-free collator flattens a packed batch into one row, which FlashAttention splits again where the
    position ids restart. Other attention gets from transformers a block-diagonal mask over that whole row, so its
    cost grows with the square of the batch's tokens: packing was slower than no packing. Kept as rows, with the
    position ids restarting at each example and no attention mask, each row gets a block-diagonal mask of its own:
    examples still do not see each other, and attention costs what rows of max_length cost.
    """

    def __init__(self, collator):
        self.collator = dataclasses.replace(collator, padding_free=False, return_position_ids=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        del batch["attention_mask"]  # without it, transformers finds the examples from the position ids
        batch["labels"][batch["position_ids"] == 0] = -100  # an example's first token is not predicted from the last
        return batch


def score_labelled_positions_only() -> None:
    """Let TRL's fused LM head skip the prompt positions on CPU too.

    TRL 1.16 scores only the positions that have a label on Triton devices, and every position elsewhere, to keep
    Neuron's tile shapes fixed. On CPU that runs the LM head over the prompts as well: plain TRL SFT on the demo data
    ran at 9.2 samples/s against 14.3 with TRL 1.12; scoring the labelled positions gives 13.1, with the same losses.
    """
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils._use_triton, "cpu_compact", False):
        return
    use_triton = trl_utils._use_triton

    def compact(device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact.cpu_compact = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact


def packed_rows_needed(config: SFTStageConfig, model) -> bool:
    # TRL 1.16 no longer lists the FlashAttention variants; transformers' own check covers them (and any new kernel).
    from transformers.utils.generic import is_flash_attention_requested

    bfd = config.packing and config.packing_strategy in ("bfd", "bfd_split")
    return bfd and not is_flash_attention_requested(model.config)


def build_trainer(config: SFTStageConfig, model_args: ModelArguments, model, tokenizer, train, evaluation):
    """TRL's SFTTrainer, with early stopping when asked and packed rows where attention needs them."""
    callbacks: list[TrainerCallback] = (
        [EarlyStoppingCallback(config.early_stopping_patience)] if config.early_stopping_patience else []
    )
    score_labelled_positions_only()
    peft, data = model_args.peft_config("CAUSAL_LM"), {"train_dataset": train, "eval_dataset": evaluation}
    trainer = SFTTrainer(model, config, processing_class=tokenizer, peft_config=peft, callbacks=callbacks, **data)
    if packed_rows_needed(config, model):
        trainer.data_collator = PackedRowsCollator(trainer.data_collator)
    one_progress_bar(trainer)
    return trainer


def main(run: RunArguments, model_args: ModelArguments, config: SFTStageConfig) -> dict[str, Any]:
    state = PartialState()
    stage = Stage("sft", run.run, run.runs_dir, [run, model_args, config], config.report_to, state.is_main_process)

    # step 1. inputs: the start model and the data, on the main process first so several processes never build the
    # same datasets cache at once.
    if not model_args.model_name_or_path:
        raise ValueError("Set model_name_or_path: the base model to fine-tune (a local path or a Hugging Face id).")
    model_path = model_args.model_name_or_path
    check_model_source("model_name_or_path", model_path)
    for setting in ("dataset", "eval_dataset", "sample_prompts"):
        runs.require_path(setting, getattr(config, setting))
    assert config.output_dir is not None  # parse() filled it in
    checkpoint, resumed_at = stage.resume_from(run.resume, config.output_dir)
    with state.main_process_first():
        train, evaluation, sample_prompts, data_stats, data_inputs = load_data(config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.chat_template is None and "prompt" in train.column_names and isinstance(train[0]["prompt"], list):
        raise ValueError(
            f"{model_path} has no chat template, but the data is conversational. Use a chat model, "
            "or give the data as plain prompt/completion text."
        )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)

    # step 2. train, evaluating every eval_steps (and at step 0 when eval_on_start, which gives the base model's loss).
    if checkpoint is not None:
        config.eval_on_start = False  # the first run evaluated the start model; its eval_loss is in the history
    trainer = build_trainer(config, model_args, model, tokenizer, train, evaluation)
    train_result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final_eval = trainer.evaluate()

    # step 3. save: every process takes part (ZeRO-3 gathers the shards); LoRA is merged on the main process.
    release_zero3_init()
    trainer.save_model(str(stage.weights_dir(model_args)))
    model_dir = stage.dir / "model"
    if state.is_main_process:
        stage.finish_model(model_args, model_path, tokenizer)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    # step 4. greedy samples on held-out prompts, from the saved model as a later stage will load it.
    samples = generate_samples(model_dir, sample_prompts, config.sample_max_new_tokens) if sample_prompts else []
    write_jsonl(stage.dir / "samples.jsonl", samples)
    stage.tracker.log_table("samples", ["prompt", "completion"], [[s["prompt"], s["completion"]] for s in samples])

    # step 5. finish: summary.json and the tracker.
    history = trainer.state.log_history
    eval_before = next((h["eval_loss"] for h in history if "eval_loss" in h and h.get("step") == 0), None)
    before = "n/a" if eval_before is None else f"{eval_before:.3f}"
    metrics = {
        "eval_loss_before": eval_before,
        "eval_loss_after": final_eval["eval_loss"],
        **trainer_figures(trainer, train_result, resumed_at),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "num_train_examples": len(train),
        "num_eval_examples": len(evaluation),
        "samples_ended_with_eos": sum(s["ended_with_eos"] for s in samples),
        "data": data_stats,
    }
    return stage.finish(
        metrics=metrics,
        inputs={"base_model": model_path, **data_inputs},
        outputs={"model": model_dir, "checkpoints": config.output_dir, "samples": stage.dir / "samples.jsonl"},
        headline=f"{metrics['train_samples_per_second'] or 0:.1f} samples/s | eval loss {before} -> "
        f"{metrics['eval_loss_after']:.3f}",
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse(SFTStageConfig, "sft")))
