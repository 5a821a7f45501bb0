"""The reward model's trainer: TRL's ``RewardTrainer`` on pairs, or ``KWayRewardTrainer`` on whole rankings (a batch
is B rankings, flattened into one batch of sequences by ``RankingCollator``); ``fit`` trains one model and saves it
as PPO loads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification
from trl import RewardTrainer
from trl.trainer.utils import pad

from pipeline.lib.launch import release_zero3_init
from pipeline.lib.quiet import one_progress_bar
from pipeline.lib.stage import ModelArguments, Stage, finish_model, weights_dir
from reward.config import RMStageConfig
from reward.losses import kway_ranking_loss, kway_ties_loss, ranking_accuracy
from reward.training_data import RMData


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


def build_trainer(
    config: RMStageConfig, model_args: ModelArguments, model_path: Path, tokenizer, data: RMData, train=None
) -> RewardTrainer:
    """TRL's RewardTrainer (or the K-way one) on ``train`` (default: all of ``data.train``); TRL loads the start
    model with a fresh scalar head (num_labels=1)."""
    trainer_class, collator = RewardTrainer, None
    if config.loss != "pairwise":
        assert not isinstance(config.pad_to_multiple_of, str)  # RewardConfig.__post_init__ resolved "auto"
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
    one_progress_bar(trainer)
    with stage.timed("train_s"):
        train_result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    with stage.timed("save_s"):
        release_zero3_init()
        trainer.save_model(str(weights_dir(out_dir, model_args)))
        if state.is_main_process:
            finish_model(out_dir, model_args, model_path, tokenizer, AutoModelForSequenceClassification, num_labels=1)
        state.wait_for_everyone()
    return trainer, train_result
