"""What the PPO loop reports: each step's metrics (TRL's names, the rollout figures, the phase timings), the tables
of greedy samples for the dashboards, and the headline figures of the whole run for summary.json."""

from __future__ import annotations

import torch
from trl.models.utils import unwrap_model_for_generation

from pipeline.lib.prompts import user_message
from ppo import rewards
from ppo.context import Context
from ppo.data import left_pad
from ppo.phases import Advantages, Batch, Timer
from ppo.rollout import truncate_after_stop


def step_metrics(
    ctx: Context, batch: Batch, adv: Advantages, stats: dict[str, float], timer: Timer
) -> dict[str, float]:
    """TRL's PPO metric names, plus the rollout figures, the per-model scores, the gold score and the phase timings."""
    accelerator, models, tokenizer, rubric = ctx.accelerator, ctx.models, ctx.tokenizer, ctx.rubric

    def mean(value: torch.Tensor) -> float:
        return accelerator.reduce(value.float().mean().detach(), "mean").item()

    mask = batch.mask.float()
    metrics = {
        "objective/kl": mean(adv.kl.sum(1)),
        "objective/entropy": mean((-batch.logprobs * mask).sum(1)),
        "objective/non_score_reward": mean(adv.non_score.sum(1)),
        "objective/scores": mean(batch.scores),
        "policy/approxkl_avg": stats["approxkl"],
        "policy/clipfrac_avg": stats["clipfrac"],
        "policy/entropy_avg": stats["entropy"],
        "loss/policy_avg": stats["pg"],
        "loss/value_avg": stats["vf"],
        "val/clipfrac_avg": stats["vf_clipfrac"],
        "val/ratio": stats["ratio"],
        "val/ratio_var": stats["ratio_var"],
        "val/num_eos_tokens": accelerator.reduce((batch.responses == tokenizer.eos_token_id).sum(), "sum").item(),
        "objective/kl_coef": models.kl.value,
        "rollout/response_length": mean(batch.lengths),
        "rollout/eos_rate": mean((batch.responses == tokenizer.eos_token_id).any(dim=1)),
        "rollout/raw_score": mean(batch.raw_scores.mean(dim=0)),
    }
    metrics["objective/rlhf_reward"] = metrics["objective/non_score_reward"] + metrics["objective/scores"]
    if len(models.reward_models) > 1:
        for i in range(len(models.reward_models)):
            metrics[f"reward/model_{i}"] = mean(batch.member_scores[i])
        metrics["reward/std"] = mean(batch.member_scores.std(dim=0))
    if rubric is not None:
        gold = torch.tensor(
            [rubric(user_message(r["prompt"]), t) for r, t in zip(batch.rows, batch.texts, strict=True)]
        )
        metrics["rollout/gold_score"] = mean(gold.to(accelerator.device))
    for name, seconds in timer.spent.items():
        metrics[f"timing/{name}_s"] = seconds
    other = sum(v for k, v in timer.spent.items() if k != "step")
    metrics["timing/other_s"] = max(timer.spent.get("step", 0.0) - other, 0.0)
    return metrics


@torch.no_grad()
def log_samples(ctx: Context) -> None:
    """A table of greedy replies to the held-out prompts, with their scores, for the dashboards."""
    config, accelerator, models, tokenizer = ctx.config, ctx.accelerator, ctx.models, ctx.tokenizer
    rows, ids, step = ctx.prompts.eval_rows, ctx.prompts.eval_ids, ctx.progress.step
    if not rows:  # every process takes part: under ZeRO-3 the gathering of the weights is collective
        return
    n = min(len(rows), config.per_device_eval_batch_size)
    queries = left_pad(ids[:n], tokenizer.pad_token_id).to(accelerator.device)
    stop = tokenizer.eos_token_id if config.stop_token == "eos" else None
    with unwrap_model_for_generation(models.model, accelerator) as gathered:
        gathered.eval()
        out = gathered.policy.generate(
            input_ids=queries.masked_fill(queries == tokenizer.pad_token_id, 0),
            attention_mask=(queries != tokenizer.pad_token_id).long(),
            do_sample=False,
            max_new_tokens=config.response_length,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
        gathered.train()
    responses = truncate_after_stop(out[:, queries.shape[1] :], stop, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    part = torch.cat([queries, responses], dim=1)
    raw = torch.stack(
        [
            rewards.score_with(
                rm, part, tokenizer.pad_token_id, [r["prompt"] for r in rows[:n]], texts, queries.shape[1]
            )
            for rm in models.reward_models
        ]
    )
    _, scores = rewards.combine(raw, models.reward_models, config.reward_aggregation, config.reward_std_coef)
    ctx.tracker.log_table(
        "samples",
        ["step", "prompt", "response", "score"],
        [[step, user_message(r["prompt"]), t, float(s)] for r, t, s in zip(rows[:n], texts, scores, strict=True)],
        step=step,
    )


def ppo_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Headline figures from the per-step history: first and last steps, and mean phase timings."""
    if not history:
        return {}
    window = max(1, len(history) // 4)  # averages over a quarter of the run smooth out single noisy steps

    def avg(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else None

    first, last = history[:window], history[-window:]
    out = {
        "score_first": avg(first, "objective/scores"),
        "score_last": avg(last, "objective/scores"),
        "rlhf_reward_first": avg(first, "objective/rlhf_reward"),
        "rlhf_reward_last": avg(last, "objective/rlhf_reward"),
        "kl_last": avg(last, "objective/kl"),
        "gold_score_first": avg(first, "rollout/gold_score"),
        "gold_score_last": avg(last, "rollout/gold_score"),
        "response_length_last": avg(last, "rollout/response_length"),
        "eos_rate_last": avg(last, "rollout/eos_rate"),
    }
    for phase in ("generation", "scoring", "reference", "value", "advantages", "optimisation", "step"):
        out[f"timing_{phase}_s_mean"] = avg(history, f"timing/{phase}_s")
    return {k: v for k, v in out.items() if v is not None}
