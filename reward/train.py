"""Stage 3, the reward model: ``make rm`` (``accelerate launch -m reward.train --config configs/rm.yaml``).

Starts from the run's SFT policy with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``) and
trains it with TRL's ``RewardTrainer`` on the run's exported labels (``runs/<run>/export/``), or on any preference
file (see ``reward.data``). Three losses: ``pairwise``, Bradley-Terry on the exported pairs; ``kway``, InstructGPT's
loss on whole rankings (``rankings.jsonl``): a batch element is a prompt's K responses with every labeler's ranking
of them, so each response is scored once instead of twice per pair it is in; and ``kway_ties``, the same with the
tied pairs modelled instead of dropped (Rao-Kupper, ``reward.losses``). About ``eval_fraction`` of the PROMPTS are
held out: no prompt has pairs on both sides, and every loss is evaluated on the same held-out (untied) pairs.

Writes ``runs/<run>/rm/``: ``model/`` (loads with ``AutoModelForSequenceClassification``; the policy's tokenizer,
unchanged, since PPO feeds the policy's token ids to it), ``reward_stats.json`` (mean and std of the scores of the
training responses: PPO normalises with them), ``reward_histogram.png`` (held-out chosen vs rejected rewards),
checkpoints, ``config.yaml`` and ``summary.json``: held-out accuracy, accuracy by rank gap, calibration (ECE) and,
with a gold ``rubric`` (the pipeline config names it), agreement with it.

Its pieces: ``reward.config`` (the settings), ``reward.training_data`` (the input file, split by prompt and
tokenized), ``reward.trainer`` (TRL's trainer or the K-way one, and ``fit``), ``reward.evaluate`` (the saved model's
held-out figures) and ``reward.ensemble`` (training and scoring an ensemble's members).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import AutoTokenizer

from pipeline.lib import runs
from pipeline.lib.errors import exit_with
from pipeline.lib.models import check_model_source
from pipeline.lib.rubric import load_rubric
from pipeline.lib.runs import ENSEMBLE
from pipeline.lib.stage import ModelArguments, RunArguments, Stage, parse, trainer_figures
from reward.config import RMStageConfig
from reward.ensemble import score_members, train_members
from reward.evaluate import score_saved_model
from reward.trainer import fit
from reward.training_data import input_path, load_data


def main(run: RunArguments, model_args: ModelArguments, config: RMStageConfig) -> dict[str, Any]:
    state = PartialState()
    stage = Stage("rm", run.run, run.runs_dir, [run, model_args, config], config.report_to, state.is_main_process)

    # step 1. inputs: the run's SFT policy (whose chat template renders the data) and its exported labels.
    with stage.timed("load_s"):
        if model_args.use_lora and not model_args.merge_lora:
            raise ValueError(
                "merge_lora: false is not for the reward model: PPO loads a plain model, so it is merged."
            )
        if model_args.model_name_or_path and not Path(model_args.model_name_or_path).exists():
            check_model_source("model_name_or_path", model_args.model_name_or_path)
        model_path = runs.stage_output(run.run, "sft", run.runs_dir, model_args.model_name_or_path)
        data_path = input_path(run, config)
        assert config.output_dir is not None  # parse() filled it in
        checkpoint, resumed_at = stage.resume_from(run.resume and config.ensemble == 1, config.output_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if tokenizer.chat_template is None:
            raise ValueError(
                f"{model_path} has no chat template. The reward model scores conversations exactly as the policy "
                "renders them, so it needs the policy's template: start from a chat model (by default the run's SFT)."
            )
        rubric = load_rubric(config.rubric)
        data = load_data(config, data_path, tokenizer)

    # step 2. train and save: one model on all the training prompts, or each member of an ensemble.
    model_dir = stage.dir / "model"
    if config.ensemble == 1:
        trainer, train_result = fit(stage, config, model_args, model_path, tokenizer, data, stage.dir, checkpoint)
    else:
        members = train_members(stage, run, config, model_args, model_path, tokenizer, data)
    if not state.is_main_process:
        return {}

    # step 3. score the held-out pairs and the training responses with the saved model(s), as PPO will load them.
    with stage.timed("score_s"):
        if config.ensemble == 1:
            (stage.dir / ENSEMBLE).unlink(missing_ok=True)  # an earlier ensemble's list would outlive it
            scored = score_saved_model(stage, model_dir, data, config, rubric)
            scored |= trainer_figures(trainer, train_result, resumed_at)
        else:
            scored = score_members(stage, members, data, config, rubric)

    # step 4. finish: summary.json and the tracker.
    metrics = {
        **scored,
        "gold_rubric": config.rubric,
        "loss": config.loss,
        "num_train_examples": len(data.train),
        "num_eval_examples": len(data.eval),
        "num_train_prompts": data.prompts["train"],
        "num_eval_prompts": data.prompts["eval"],
        "data": data.stats,
        "timing": stage.timing,
    }
    gold = "" if rubric is None else f" (gold rubric {metrics['eval_gold_accuracy']:.1%})"
    what = f"{config.loss} loss" + (f", ensemble of {config.ensemble}" if config.ensemble > 1 else "")
    outputs = {"model": stage.dir / ENSEMBLE if config.ensemble > 1 else model_dir}
    outputs |= {
        "reward_stats": stage.dir / "reward_stats.json",
        "reward_histogram": stage.dir / "reward_histogram.png",
    }
    return stage.finish(
        metrics=metrics,
        inputs={"sft_model": model_path, "preferences": data_path},
        outputs=outputs | {"checkpoints": config.output_dir},
        headline=f"{what} | held-out accuracy {metrics['eval_accuracy']:.1%}{gold} on "
        f"{metrics['eval_pairs']} pairs | ECE {metrics['eval_ece']:.3f}",
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse(RMStageConfig, "rm")))
