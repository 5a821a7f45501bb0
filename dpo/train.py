"""DPO on the same labels as PPO: ``make dpo`` (``accelerate launch -m dpo.train --config configs/dpo.yaml``).

TRL's ``DPOTrainer`` from the run's SFT policy on the run's exported preference pairs
(``runs/<run>/export/preferences.jsonl``, TRL's conversational ``{prompt, chosen, rejected}``), with the SFT policy as
the frozen reference. No reward model: DPO's implicit reward is beta * log(pi / ref). ``make eval`` then puts the
DPO policy beside PPO and best-of-n (gold score, KL to SFT, win rate), so the three answers to "align on these
labels" are compared on the same prompts.

Writes ``runs/<run>/dpo/``: ``model/`` (a plain causal LM with the SFT tokenizer), checkpoints, ``config.yaml`` and
``summary.json`` (loss, the implicit reward's accuracy and margin on the training pairs as last logged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from pipeline.lib import runs
from pipeline.lib.errors import DataError, exit_with
from pipeline.lib.launch import release_zero3_init
from pipeline.lib.models import check_model_source
from pipeline.lib.quiet import one_progress_bar
from pipeline.lib.stage import ModelArguments, RunArguments, Stage, TrainerDefaults, parse, trainer_figures
from pipeline.lib.tables import read_table

COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class DPOStageConfig(TrainerDefaults, DPOConfig):  # type: ignore[misc]  # the overridden field types, see TrainerDefaults
    """Everything ``DPOConfig`` (and so ``TrainingArguments``) takes, plus where the pairs are. The run and the start
    model (default: the run's SFT policy) are ``pipeline.lib.stage.RunArguments`` and ``ModelArguments``."""

    preferences: str | None = field(
        default=None,
        metadata={"help": "Default: the run's export (preferences.jsonl). Or a file with prompt/chosen/rejected."},
    )


def load_pairs(path: Path) -> tuple[Dataset, dict[str, Any]]:
    """The pairs as TRL's conversational preference rows; a clear error when there are none to learn from."""
    rows = read_table(path)
    if rows and not set(COLUMNS) <= rows[0].keys():
        raise DataError(
            f"{path}: DPO trains on preference pairs with columns {', '.join(COLUMNS)}; the first row has "
            f"{', '.join(sorted(rows[0]))}. Point --preferences at the export's preferences.jsonl."
        )
    pairs = [{k: row[k] for k in COLUMNS} for row in rows if row["chosen"] != row["rejected"]]
    if not pairs:
        raise DataError(
            f"{path}: {len(rows)} rows, no preference pair to learn from (a chosen reply different from the "
            "rejected one). Label more, or check the export: `make export` says how many pairs it wrote and why "
            "others were left out."
        )
    prompts = {str(row["prompt"]) for row in rows}
    return Dataset.from_list(pairs), {"pairs": len(pairs), "rows_in": len(rows), "prompts": len(prompts)}


def main(run: RunArguments, model_args: ModelArguments, config: DPOStageConfig) -> dict[str, Any]:
    state = PartialState()
    stage = Stage("dpo", run.run, run.runs_dir, [run, model_args, config], config.report_to, state.is_main_process)

    # step 1. inputs: the run's SFT policy (also the reference) and its exported pairs, checked before any model loads.
    if model_args.model_name_or_path and not Path(model_args.model_name_or_path).exists():
        check_model_source("model_name_or_path", model_args.model_name_or_path)
    model_path = runs.stage_output(run.run, "sft", run.runs_dir, model_args.model_name_or_path)
    data_path = runs.stage_output(run.run, "export", run.runs_dir, config.preferences)
    if data_path.is_dir():
        data_path = data_path / "preferences.jsonl"
    train, data_stats = load_pairs(data_path)
    assert config.output_dir is not None  # parse() filled it in
    checkpoint, resumed_at = stage.resume_from(run.resume, config.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    # step 2. train: TRL loads the policy and, without LoRA, a frozen copy of it as the reference.
    trainer = DPOTrainer(
        model=str(model_path),
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=model_args.peft_config("CAUSAL_LM"),
    )
    one_progress_bar(trainer)
    with stage.timed("train_s"):
        train_result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    # step 3. save: every process takes part (ZeRO-3 gathers the shards); LoRA is merged on the main process.
    with stage.timed("save_s"):
        release_zero3_init()
        trainer.save_model(str(stage.weights_dir(model_args)))
        if state.is_main_process:
            stage.finish_model(model_args, model_path, tokenizer)
        state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    # step 4. finish: summary.json and the tracker.
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    last = logged[-1] if logged else {}
    metrics = {
        **trainer_figures(trainer, train_result, resumed_at),
        "beta": config.beta,
        "rewards_accuracy_last": last.get("rewards/accuracies"),
        "rewards_margin_last": last.get("rewards/margins"),
        "data": data_stats,
        "timing": stage.timing,
    }
    accuracy = "n/a" if metrics["rewards_accuracy_last"] is None else f"{metrics['rewards_accuracy_last']:.1%}"
    return stage.finish(
        metrics=metrics,
        inputs={"sft_model": model_path, "preferences": data_path},
        outputs={"model": stage.dir / "model", "checkpoints": config.output_dir},
        headline=f"{data_stats['pairs']} pairs | beta {config.beta} | train loss {metrics['train_loss']:.3f} | "
        f"implicit-reward accuracy {accuracy} (last logged)",
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse(DPOStageConfig, "dpo")))
