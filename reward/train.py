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
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.state import AcceleratorState
from datasets import Dataset
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import pad

from pipeline.lib import runs
from pipeline.lib.errors import DataError, exit_with
from pipeline.lib.launch import release_zero3_init
from pipeline.lib.models import check_model_source
from pipeline.lib.prompts import user_message
from pipeline.lib.rubric import load_rubric
from pipeline.lib.runs import ENSEMBLE
from pipeline.lib.stage import (
    ModelArguments,
    RunArguments,
    Stage,
    TrainerDefaults,
    finish_model,
    latest_checkpoint,
    parse,
    trainer_figures,
    weights_dir,
)
from pipeline.lib.tables import read_table
from reward import data as rm_data
from reward import ensemble
from reward import evaluate as rm_eval
from reward.losses import kway_ranking_loss, kway_ties_loss, rank_gap_margin, ranking_accuracy

LOSSES = ("pairwise", "kway", "kway_ties")


@dataclass
class RMStageConfig(TrainerDefaults, RewardConfig):
    """Everything ``RewardConfig`` (and so ``TrainingArguments``) takes, plus the stage's own settings below. The run
    and the start model (default: the run's SFT policy) are ``pipeline.lib.stage.RunArguments`` and
    ``ModelArguments``; with LoRA the score head is trained in full and the saved model is always merged."""

    preferences: str | None = field(
        default=None,
        metadata={
            "help": "Default: the run's export. Or an export folder, a jsonl/json/csv/parquet file, a datasets folder."
        },
    )
    loss: str = field(
        default="pairwise",
        metadata={
            "help": "pairwise (Bradley-Terry on pairs), kway (rankings; ties dropped) or kway_ties (rankings; ties "
            "modelled, Rao-Kupper)."
        },
    )
    tie_threshold: float = field(
        default=1.0,
        metadata={"help": "kway_ties: the reward gap log(theta) within which two replies are likely a tie (> 0)."},
    )
    margin_from_rank_gap: bool = field(
        default=False, metadata={"help": "Pairs ranked n places apart must be scored at least n - 1 apart."}
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the prompts held out for evaluation."})
    ensemble: int = field(
        default=1,
        metadata={
            "help": "Members of a reward-model ensemble, each with its own seed and bootstrap sample of the training "
            "prompts (1: one model, on all of them)."
        },
    )
    rubric: str | None = field(
        default=None,
        metadata={"help": "Gold rubric module:function: the held-out pairs' agreement with it (eval_gold_accuracy)."},
    )
    # The K-way collator pads to pad_to_multiple_of as TRL's pair collator does.

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}.")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}.")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be at least 1 (members), got {self.ensemble}.")
        if self.loss == "kway_ties" and not self.tie_threshold > 0:
            raise ValueError(
                f"tie_threshold must be > 0 for loss kway_ties (at 0 no tie is possible), got {self.tie_threshold}."
            )


# ---------------------------------------------------------------------------------------------------------------
# The K-way loss inside TRL's RewardTrainer: a batch is B rankings, flattened into one batch of sequences.


@dataclass
class RankingCollator:
    """A batch of items (a prompt's K responses and their rankings), each response once in one padded batch.

    Returns ``input_ids``/``attention_mask`` of every response, ``response_mask[I, K]`` (which slots of each item hold
    a response), and per ranking ``ranks[R, K]`` and ``ranking_item[R]`` (the item it ranks).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [torch.tensor(ids) for example in examples for ids in example["response_ids"]]
        k = max(len(example["response_ids"]) for example in examples)
        response_mask = torch.zeros(len(examples), k, dtype=torch.bool)
        ranks, ranking_item = [], []
        for i, example in enumerate(examples):
            response_mask[i, : len(example["response_ids"])] = True
            for ranking in example["rankings"]:
                ranks.append(ranking + [0] * (k - len(ranking)))
                ranking_item.append(i)
        return {
            "input_ids": pad(sequences, self.pad_token_id, "right", self.pad_to_multiple_of),
            "attention_mask": pad([torch.ones_like(s) for s in sequences], 0, "right", self.pad_to_multiple_of),
            "response_mask": response_mask,
            "ranks": torch.tensor(ranks),
            "ranking_item": torch.tensor(ranking_item),
        }


class KWayRewardTrainer(RewardTrainer):
    """RewardTrainer on whole rankings, with ``reward.losses.kway_ranking_loss`` (or ``kway_ties_loss``); data comes
    tokenized."""

    # This loss is a mean over the batch's rankings, not scaled for gradient accumulation: Trainer divides it by the
    # accumulation steps.
    loss_is_scaled_for_ga = False

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # tokenized (and too-long rankings dropped) by reward.data

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["response_ids", "rankings"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        # The flat scores back into [items, K] (the collator's row-major order), then one row per ranking.
        mask = inputs["response_mask"]
        rewards = outputs.logits.new_zeros(mask.shape).masked_scatter(mask, outputs.logits.squeeze(-1))
        item = inputs["ranking_item"]
        if self.args.loss == "kway_ties":
            loss = kway_ties_loss(rewards[item], inputs["ranks"], mask[item], self.args.tie_threshold)
        else:
            loss = kway_ranking_loss(rewards[item], inputs["ranks"], mask[item], self.args.margin_from_rank_gap)
        with torch.no_grad():
            accuracy = ranking_accuracy(rewards[item], inputs["ranks"], mask[item])
            self._metrics[mode]["accuracy"].append(self.accelerator.gather_for_metrics(accuracy).mean().item())
            mean_reward = self.accelerator.gather_for_metrics(outputs.logits.mean()).mean().item()
            self._metrics[mode]["mean_reward"].append(mean_reward)
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class RMData:
    """The data after reading, checking, splitting by prompt and tokenizing."""

    train: Dataset
    eval: Dataset
    eval_pairs: list[dict[str, Any]]  # held-out pairs with token ids: what the final evaluation scores
    train_sequences: list[list[int]]  # every training response (prompt + response ids): for reward_stats.json
    train_rows: list[dict[str, Any]]  # the rows of ``train``, and the prompt of each: an ensemble member's bootstrap
    train_groups: list[str]
    prompts: dict[str, int]
    stats: dict[str, Any]


def input_path(run: RunArguments, config: RMStageConfig) -> Path:
    """The file to train on: the export's preferences.jsonl (pairwise) or rankings.jsonl (kway), or the user's."""
    path = runs.stage_output(run.run, "export", run.runs_dir, config.preferences)
    if config.loss == "pairwise":
        path = path / "preferences.jsonl" if (path / "preferences.jsonl").is_file() else path
        if path.is_file():
            check_loss_fits(path, config.loss)
        return path
    if path.is_dir():
        rankings = path / "rankings.jsonl"
    else:
        rankings = path.with_name("rankings.jsonl") if path.name.startswith("preferences.") else path
    if not rankings.exists():
        raise runs.MissingInputError(
            f"loss {config.loss} trains on whole rankings, but there is no {rankings}. Point --preferences at an export folder "
            "(runs/<run>/export/) or a rankings file, or use --loss pairwise."
        )
    if rankings.is_file():
        check_loss_fits(rankings, config.loss)
    return rankings


def check_loss_fits(path: Path, loss: str) -> None:
    """Pairs need the pairwise loss and whole rankings the K-way one: say which setting to change, before every row
    fails with a missing column."""
    first = read_table(path)[0]
    if loss != "pairwise" and {"chosen", "rejected"} <= first.keys():
        raise ValueError(
            f"{path} holds preference pairs (chosen/rejected), but loss: {loss} trains on whole rankings (responses "
            "and ranks, as the export's rankings.jsonl). Train on the pairs with --loss pairwise, or point "
            "--preferences at a rankings file."
        )
    if loss == "pairwise" and {"responses", "ranks"} <= first.keys():
        raise ValueError(
            f"{path} holds whole rankings (responses and ranks), but loss: pairwise trains on pairs. Use "
            "--loss kway, or point --preferences at a pairs file (the export's preferences.jsonl)."
        )


def load_data(config: RMStageConfig, path: Path, tokenizer) -> RMData:
    pairwise = config.loss == "pairwise"
    if pairwise:
        examples, stats = rm_data.load_preferences(path)
    else:  # a ranking that ties every reply says something only to the loss that models ties
        examples, stats = rm_data.load_rankings(path, keep_all_tied=config.loss == "kway_ties")
    if len({e["group_id"] for e in examples}) < 2:
        dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in stats.dropped.most_common()) or "none"
        raise DataError(
            f"{path}: {stats.rows_in} rows read, {len(examples)} usable {'pairs' if pairwise else 'rankings'} left, "
            f"from {len({e['group_id'] for e in examples})} prompts; dropped: {dropped}. The reward model needs "
            "pairs that prefer one different reply over another, from at least 2 prompts: check the data (identical "
            "or tied replies teach nothing), or label more."
        )
    train_groups, eval_groups = rm_eval.split_by_group(
        (e["group_id"] for e in examples), config.eval_fraction, config.seed
    )
    tokenize = rm_data.tokenize_pairs if pairwise else rm_data.tokenize_rankings
    examples, too_long = tokenize(examples, tokenizer, config.max_length)
    stats.dropped["too_long"] += too_long
    train = [e for e in examples if e["group_id"] in train_groups]
    held_out = [e for e in examples if e["group_id"] in eval_groups]
    if not train or not held_out:
        raise DataError(
            f"{path}: {len(train)} training and {len(held_out)} held-out examples are left after dropping "
            f"{dict(stats.dropped)}; both need some. Add data, or raise max_length if many were too long."
        )

    if pairwise:
        use_margin = config.margin_from_rank_gap
        if use_margin and any(e["rank_gap"] is None for e in examples):
            raise DataError(f"{path}: margin_from_rank_gap needs a rank_gap on every pair. Add it, or turn it off.")

        def columns(e):
            margin = {"margin": float(rank_gap_margin(e["rank_gap"]))} if use_margin else {}
            return {"chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"], **margin}

        eval_pairs = held_out
        train_sequences = [ids for e in train for ids in (e["chosen_ids"], e["rejected_ids"])]
    else:
        eval_pairs = [pair for ranking in held_out for pair in rm_data.ranking_pairs(ranking)]
        # Tied pairs of the training rankings: dropped by kway, modelled by kway_ties.
        stats.tied_pairs = sum(a == b for e in train for i, a in enumerate(e["ranks"]) for b in e["ranks"][i + 1 :])
        # Rankings of one prompt's responses by several labelers share their forward passes.
        train, held_out = rm_data.rankings_by_item(train), rm_data.rankings_by_item(held_out)

        def columns(e):
            return {"response_ids": e["response_ids"], "rankings": e["rankings"]}

        train_sequences = [ids for e in train for ids in e["response_ids"]]
    train_rows = [columns(e) for e in train]
    return RMData(
        train=Dataset.from_list(train_rows),
        eval=Dataset.from_list([columns(e) for e in held_out]),
        eval_pairs=eval_pairs,
        train_sequences=train_sequences,
        train_rows=train_rows,
        train_groups=[e["group_id"] for e in train],
        prompts={"train": len({e["group_id"] for e in train}), "eval": len({e["group_id"] for e in held_out})},
        stats=stats.as_dict(),
    )


# ---------------------------------------------------------------------------------------------------------------
# Evaluation of the saved model


def score_sequences(model_dir: Path, sequences: list[list[int]], batch_size: int) -> dict[tuple[int, ...], float]:
    """The saved reward model's score of each distinct sequence, loaded fresh as PPO will load it."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    distinct = sorted({tuple(s) for s in sequences}, key=len)  # similar lengths side by side: little padding
    scores = {}
    for start in tqdm(range(0, len(distinct), batch_size), desc="scoring", unit="batch"):
        batch = distinct[start : start + batch_size]
        ids = [torch.tensor(s) for s in batch]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=model.config.pad_token_id)
        attention_mask = pad_sequence([torch.ones_like(s) for s in ids], batch_first=True)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        scores.update(zip(batch, logits[:, 0].float().cpu().tolist(), strict=True))
    return scores


def evaluate_pairs(
    pairs: list[dict[str, Any]], scores: dict, rubric: Callable[[str, str], float] | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The held-out figures for summary.json, and the chosen and rejected rewards; with a gold ``rubric``, how often
    the reward model and the labels order a pair as the rubric does."""
    r_chosen = np.array([scores[tuple(p["chosen_ids"])] for p in pairs])
    r_rejected = np.array([scores[tuple(p["rejected_ids"])] for p in pairs])
    metrics = {
        "eval_pairs": len(pairs),
        "eval_accuracy": rm_eval.pairwise_accuracy(r_chosen, r_rejected),
        "eval_ece": rm_eval.expected_calibration_error(r_chosen, r_rejected),
        "calibration": rm_eval.calibration_bins(r_chosen, r_rejected),
        "eval_reward_margin": float(np.mean(r_chosen - r_rejected)),
        "eval_reward_chosen_mean": float(r_chosen.mean()),
        "eval_reward_rejected_mean": float(r_rejected.mean()),
        "accuracy_by_gap": None,
        "eval_gold_accuracy": None,
    }
    if all(p["rank_gap"] is not None for p in pairs):
        metrics["accuracy_by_gap"] = rm_eval.accuracy_by_gap(r_chosen, r_rejected, [p["rank_gap"] for p in pairs])
    if rubric is not None:

        def score(pair, key):
            return rubric(user_message(pair["prompt"]), " ".join(m["content"] for m in pair[key]))

        gold_chosen = [score(p, "chosen") for p in pairs]
        gold_rejected = [score(p, "rejected") for p in pairs]
        agreement = rm_eval.gold_agreement(r_chosen, r_rejected, gold_chosen, gold_rejected)
        # The labels' own agreement with the rubric: the ceiling a reward model copying the labels would reach.
        labels = rm_eval.gold_agreement(np.ones(len(pairs)), np.zeros(len(pairs)), gold_chosen, gold_rejected)
        metrics |= {
            "eval_gold_accuracy": agreement["agreement"],
            "eval_gold_pairs": agreement["pairs"],
            "eval_gold_ties": agreement["gold_ties"],
            "eval_label_gold_agreement": labels["agreement"],
        }
    return metrics, r_chosen, r_rejected


def plot_rewards(path: Path, r_chosen: np.ndarray, r_rejected: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.histogram_bin_edges(np.concatenate([r_chosen, r_rejected]), bins=30)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(r_chosen, bins, alpha=0.6, label="chosen")
    ax.hist(r_rejected, bins, alpha=0.6, label="rejected")
    ax.set(xlabel="reward", ylabel="held-out pairs", title="Reward of chosen vs rejected responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------


def build_trainer(
    config: RMStageConfig, model_args: ModelArguments, model_path: Path, tokenizer, data: RMData, train=None
) -> RewardTrainer:
    """TRL's RewardTrainer (or the K-way one) on ``train`` (default: all of ``data.train``); TRL loads the start
    model with a fresh scalar head (num_labels=1)."""
    trainer_class, collator = RewardTrainer, None
    if config.loss != "pairwise":
        trainer_class, collator = KWayRewardTrainer, RankingCollator(tokenizer.pad_token_id, config.pad_to_multiple_of)
    return trainer_class(
        model=str(model_path),
        args=config,
        data_collator=collator,
        train_dataset=data.train if train is None else train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=model_args.peft_config("SEQ_CLS", modules_to_save=["score"]),
    )


def score_saved_model(stage: Stage, model_dir: Path, data: RMData, config: RMStageConfig, rubric) -> dict[str, Any]:
    """The held-out figures and reward_stats.json, from the saved model loaded as PPO will load it."""
    scores = score_sequences(model_dir, scored_sequences(data), config.per_device_eval_batch_size)
    return figures_from_scores(stage, stage.dir, scores, data, rubric)


def scored_sequences(data: RMData) -> list[list[int]]:
    """The held-out pairs' sequences and every training response: what the saved model scores."""
    return [ids for p in data.eval_pairs for ids in (p["chosen_ids"], p["rejected_ids"])] + data.train_sequences


def figures_from_scores(stage: Stage, out_dir: Path, scores: dict, data: RMData, rubric) -> dict[str, Any]:
    """``out_dir``'s reward_stats.json and reward histogram, and the held-out figures, from scores of
    ``scored_sequences``."""
    reward_stats = rm_eval.reward_stats([scores[s] for s in {tuple(ids) for ids in data.train_sequences}])
    runs.write_json(out_dir / "reward_stats.json", reward_stats)
    eval_metrics, r_chosen, r_rejected = evaluate_pairs(data.eval_pairs, scores, rubric)
    plot_rewards(out_dir / "reward_histogram.png", r_chosen, r_rejected)
    if out_dir == stage.dir:
        rows = [[float(r), "chosen"] for r in r_chosen] + [[float(r), "rejected"] for r in r_rejected]
        stage.tracker.log_table("eval/reward_histogram", ["reward", "response"], rows)
    return {**eval_metrics, "reward_mean": reward_stats["mean"], "reward_std": reward_stats["std"]}


def fit(
    stage: Stage,
    config: RMStageConfig,
    model_args: ModelArguments,
    model_path: Path,
    tokenizer,
    data: RMData,
    out_dir: Path,
    checkpoint: Path | None,
    train=None,
):
    """Train, then save a plain model at ``out_dir/model``: every process takes part (ZeRO-3 gathers the shards);
    LoRA is merged on the main process. The tokenizer is the policy's own: PPO checks that the two match."""
    state = PartialState()
    trainer = build_trainer(config, model_args, model_path, tokenizer, data, train)
    with stage.timed("train_s"):
        train_result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    with stage.timed("save_s"):
        release_zero3_init()
        trainer.save_model(str(weights_dir(out_dir, model_args)))
        if state.is_main_process:
            finish_model(out_dir, model_args, model_path, tokenizer, AutoModelForSequenceClassification, num_labels=1)
        state.wait_for_everyone()
    return trainer, train_result


def train_members(
    stage: Stage, run: RunArguments, config: RMStageConfig, model_args: ModelArguments, model_path, tokenizer, data
) -> list[dict[str, Any]]:
    """Every member of the ensemble, one after another: seed ``seed + i``, a bootstrap sample of the training
    prompts, its own folder. Resuming keeps the members saved already and continues the one a kill cut short."""
    state, members = PartialState(), []
    for i in range(config.ensemble):
        out = ensemble.member_dir(stage.dir, i)
        if run.resume and (out / "member.json").is_file():
            members.append(json.loads((out / "member.json").read_text()))
            continue
        checkpoint = None
        if run.resume and any((out / "checkpoints").glob("checkpoint-*")):
            checkpoint = latest_checkpoint(out / "checkpoints")
        elif state.is_main_process:
            shutil.rmtree(out, ignore_errors=True)
        state.wait_for_everyone()
        member = copy.copy(config)
        member.seed, member.output_dir = config.seed + i, str(out / "checkpoints")
        if i:  # the tracker's steps would run backwards: member 0's curves stand for the rest
            member.report_to = []
            # accelerate keeps one AcceleratorState per process, holding the first Trainer's DeepSpeed plugin, and
            # refuses a second Accelerator with a plugin of its own: each member's Trainer starts from a fresh one
            # (the process group, in PartialState, stays).
            AcceleratorState._reset_state()
        drawn = ensemble.bootstrap_counts(data.train_groups, member.seed)
        rows = [
            row for row, group in zip(data.train_rows, data.train_groups, strict=True) for _ in range(drawn[group])
        ]
        print(
            f"[rm] ensemble member {i + 1}/{config.ensemble}: seed {member.seed}, {len(drawn)} of "
            f"{len(set(data.train_groups))} training prompts drawn, {len(rows)} examples"
        )
        trainer, result = fit(
            stage, member, model_args, model_path, tokenizer, data, out, checkpoint, Dataset.from_list(rows)
        )
        resumed_at = [int(checkpoint.name.split("-")[-1])] if checkpoint else []
        figures = {"member": i, "seed": member.seed, "prompts_drawn": len(drawn), "train_examples": len(rows)}
        figures |= trainer_figures(trainer, result, resumed_at)
        if state.is_main_process:
            runs.write_json(out / "member.json", figures)
        members.append(figures)
    return members


def score_members(stage: Stage, members: list[dict], data: RMData, config: RMStageConfig, rubric) -> dict[str, Any]:
    """Each member's held-out figures and reward_stats.json; the ensemble's (its mean score) in the stage folder;
    the members' disagreement on the held-out pairs; and ensemble.json, which PPO and the evaluation read."""
    dirs = [ensemble.member_dir(stage.dir, m["member"]) for m in members]
    sequences = scored_sequences(data)
    scores = [score_sequences(d / "model", sequences, config.per_device_eval_batch_size) for d in dirs]
    keep = ("eval_accuracy", "eval_gold_accuracy", "eval_ece", "eval_reward_margin", "reward_mean", "reward_std")
    for member, d, member_scores in zip(members, dirs, scores, strict=True):
        figures = figures_from_scores(stage, d, member_scores, data, rubric)
        member |= {key: figures[key] for key in keep}
    margins = np.array(
        [[s[tuple(p["chosen_ids"])] - s[tuple(p["rejected_ids"])] for p in data.eval_pairs] for s in scores]
    )
    metrics = figures_from_scores(stage, stage.dir, ensemble.mean_scores(scores), data, rubric)
    members_file = {"members": [str(d.relative_to(stage.dir) / "model") for d in dirs], "score": "mean"}
    runs.write_json(stage.dir / ENSEMBLE, members_file)
    train_loss = float(np.mean([m["train_loss"] for m in members]))
    return {
        **metrics,
        **ensemble.disagreement(margins),
        "train_loss": train_loss,
        "ensemble": len(members),
        "members": members,
    }


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
