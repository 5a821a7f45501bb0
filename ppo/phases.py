"""The phases of a PPO step, each timed: generate, score, the reference's log-probs and the critic's values (the
rollout); rewards and advantages; PPO epochs over mini-batches. The math they compose is in ``ppo/algorithm.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from trl.models.utils import unwrap_model_for_generation

from ppo import rewards
from ppo.algorithm import (
    entropy_from_logits,
    gae,
    gathered_logprobs,
    kl_per_token,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
    whitening_sums,
)
from ppo.context import Context
from ppo.data import left_pad, sample_seeds
from ppo.models import response_logits, response_values
from ppo.rollout import hf_generate, truncate_after_stop
from ppo.shaping import first_true, length_penalty, response_lengths


class Timer:
    """Seconds per phase of the step, as verl's ``marked_timer`` keeps them (GPU work included: it synchronises)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Batch:
    """One process's rollouts of a step, with their scores, log-probs and values (``[B, R]`` unless noted)."""

    rows: list[dict]
    queries: torch.Tensor  # [B, Q], left-padded
    responses: torch.Tensor  # truncated after the stop token, right-padded
    logprobs: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor  # [B]
    texts: list[str]
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # [B], what PPO optimises
    member_scores: torch.Tensor  # [M, B], normalised, one row per reward model
    raw_scores: torch.Tensor  # [M, B]


@dataclass
class Advantages:
    """What phase 4 computes from a ``Batch`` (``[B, R]``): the per-token KL and the rewards besides the score,
    and GAE's advantages (whitened) and returns."""

    kl: torch.Tensor
    non_score: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def pad_right(tensor: torch.Tensor, width: int, value) -> torch.Tensor:
    if tensor.shape[1] >= width:
        return tensor[:, :width]
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def trim_left(queries: torch.Tensor, pad: int) -> torch.Tensor:
    """Drop the leading columns that are padding in every row (a batch is padded to its longest prompt)."""
    real = (queries != pad).any(dim=0)
    return queries[:, int(real.int().argmax()) if real.any() else 0 :]


def trim(query_responses: torch.Tensor, context: int, lengths: torch.Tensor, pad: int) -> tuple[torch.Tensor, int]:
    """The rows without the columns that are padding in all of them, on both sides, and the new prompt width.

    Positions come from the attention mask, so what the loop reads is unchanged, and nothing is computed on padding
    that no row needs (prompts of a chunk are shorter than the step's longest; responses end before the limit).
    """
    queries = query_responses[:, :context]
    left = context - trim_left(queries, pad).shape[1]
    right = context + max(int(lengths.max()), 1)
    return query_responses[:, left:right], context - left


def global_sums(accelerator: Accelerator, values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    sums = torch.tensor(whitening_sums(values, mask), dtype=torch.float64, device=values.device)
    return tuple(accelerator.reduce(sums, "sum").tolist())


def step_prompts(ctx: Context) -> tuple[list[dict], list[list[int]], torch.Tensor]:
    """This process's prompts of the step (rows and token ids) and each rollout's sampling seed."""
    config, accelerator, prompts = ctx.config, ctx.accelerator, ctx.prompts
    positions = prompts.order.positions(
        ctx.progress.step, accelerator.process_index, accelerator.num_processes, config.local_batch_size
    )
    # Rows by prompt length: the chunks of the rollout then pad less. A row's sample depends on its seed alone.
    positions = sorted(positions, key=lambda p: len(prompts.train_ids[prompts.order.prompt_at(p)]))
    picked = [prompts.order.prompt_at(p) for p in positions]
    return (
        [prompts.train_rows[i] for i in picked],
        [prompts.train_ids[i] for i in picked],
        sample_seeds(config.seed, positions),
    )


def rollout(ctx: Context, rows: list[dict], prompt_ids: list[list[int]], seeds: torch.Tensor, timer: Timer) -> Batch:
    """Phase 1-3: generate the responses, score them, and compute the reference log-probs and the values."""
    config, accelerator, models, tokenizer = ctx.config, ctx.accelerator, ctx.models, ctx.tokenizer
    pad, device = tokenizer.pad_token_id, accelerator.device
    stop = tokenizer.eos_token_id if config.stop_token == "eos" else None
    queries = left_pad(prompt_ids, pad).to(device)
    chunk = config.local_rollout_forward_batch_size
    generation_chunk = config.generation_batch_size or len(queries)
    unwrapped = accelerator.unwrap_model(models.model)

    # phase 1. generate: the policy's weights are gathered once for the whole rollout under ZeRO-3.
    with timer("generation"):
        unwrapped.eval()
        generated: list[torch.Tensor] = []
        logprobs: list[torch.Tensor] = []
        if models.generator is not None:
            with unwrap_model_for_generation(models.model, accelerator) as gathered:
                models.generator.push(gathered.policy)  # the last update's weights (with LoRA: the adapter only)
            generated = [models.generator.generate(queries, seeds, pad, stop)]
        else:
            with unwrap_model_for_generation(models.model, accelerator) as gathered:
                for i in range(0, len(queries), generation_chunk):
                    out, logp = hf_generate(
                        gathered.policy,
                        trim_left(queries[i : i + generation_chunk], pad),
                        seeds[i : i + generation_chunk].to(device),
                        pad_token_id=pad,
                        stop_token_id=stop,
                        max_new_tokens=config.response_length,
                        temperature=config.temperature,
                    )
                    generated.append(out)
                    logprobs.append(logp)
        width = max(r.shape[1] for r in generated)
        responses = truncate_after_stop(torch.cat([pad_right(r, width, pad) for r in generated]), stop, pad)
    if stop is not None:
        lengths = response_lengths(responses, stop, pad)
    else:
        lengths = first_true(responses == pad)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    query_responses = torch.cat([queries, responses], dim=1)

    ref_logprobs: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    raw: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, len(queries), chunk):
            part, context = trim(query_responses[i : i + chunk], queries.shape[1], lengths[i : i + chunk], pad)
            tokens = part[:, context:]
            # phase 2. score: every reward model, on the truncated responses.
            with timer("scoring"):
                prompts = [r["prompt"] for r in rows[i : i + chunk]]
                raw.append(
                    torch.stack(
                        [
                            rewards.score_with(rm, part, pad, prompts, texts[i : i + chunk], context)
                            for rm in models.reward_models
                        ]
                    )
                )
            # phase 3. the reference's log-probs and the critic's values (and the policy's, for vLLM rollouts).
            with timer("reference"):
                ref_model = models.ref if models.ref is not None else unwrapped.policy
                adapter_off = unwrapped.policy.disable_adapter() if models.ref is None else nullcontext()
                with adapter_off:
                    logits = response_logits(ref_model, part, context, pad, config.temperature)
                ref_logprobs.append(pad_right(gathered_logprobs(logits, tokens), width, 0.0))
                if models.generator is not None:
                    logits = response_logits(unwrapped.policy, part, context, pad, config.temperature)
                    logprobs.append(gathered_logprobs(logits, tokens))
                del logits
            with timer("value"):
                values.append(
                    pad_right(response_values(unwrapped.value_model, part, context, pad).float(), width, 0.0)
                )
    raw_scores = torch.cat(raw, dim=1)

    # The score PPO optimises: each model's normalised score, combined; a per-token length cost; the EOS penalty.
    member_scores, scores = rewards.combine(
        raw_scores, models.reward_models, config.reward_aggregation, config.reward_std_coef
    )
    scores = scores - length_penalty(lengths, config.length_penalty)
    if config.missing_eos_penalty is not None:
        ended = (responses == tokenizer.eos_token_id).any(dim=1)
        scores = torch.where(ended, scores, scores - config.missing_eos_penalty)
    unwrapped.train()
    return Batch(
        rows,
        queries,
        responses,
        logprobs=torch.cat([pad_right(lp, width, 0.0) for lp in logprobs]) * mask,
        mask=mask,
        lengths=lengths,
        texts=texts,
        ref_logprobs=torch.cat(ref_logprobs) * mask,
        values=torch.cat(values) * mask,
        scores=scores,
        member_scores=member_scores,
        raw_scores=raw_scores,
    )


def compute_advantages(ctx: Context, batch: Batch) -> Advantages:
    """Phase 4: per-token rewards (KL penalty at this step's coefficient, score at the last token), GAE, and
    advantages whitened over every process's rollouts (so two processes compute what one would)."""
    config, accelerator, kl_coef = ctx.config, ctx.accelerator, ctx.models.kl.value
    mask = batch.mask.float()
    kl = kl_per_token(batch.logprobs, batch.ref_logprobs, config.kl_estimator) * mask
    last = (batch.lengths - 1).clamp(min=0)
    token_reward, non_score = token_rewards(kl, batch.scores, last, kl_coef, mask)
    if config.whiten_rewards:
        token_reward = whiten(token_reward, mask, global_sums(accelerator, token_reward, mask), shift_mean=False)
    advantages, returns = gae(token_reward, batch.values, mask, config.gamma, config.lam)
    advantages = whiten(advantages, mask, global_sums(accelerator, advantages, mask))
    return Advantages(kl, non_score, advantages, returns)


def optimise(ctx: Context, batch: Batch, adv: Advantages) -> dict[str, float]:
    """Phase 5: ``num_ppo_epochs`` passes over the rollouts in mini-batches, each one optimiser step.

    A mini-batch's loss is the mean over its tokens on every process: each micro-batch's summed loss is divided by
    the mini-batch's token count, so batch 1 x accumulation 8 makes the same update as batch 8 x 1, and two
    processes the update of one. (accelerate divides by the accumulation steps, DDP averages over processes: the
    factor below undoes both.)
    """
    config, accelerator, models = ctx.config, ctx.accelerator, ctx.models
    model, pad_width, pad, step = models.model, batch.queries.shape[1], ctx.tokenizer.pad_token_id, ctx.progress.step
    query_responses = torch.cat([batch.queries, batch.responses], dim=1)
    # Micro-batches of similar lengths pad less; within a mini-batch their grouping does not change its update.
    total_length = (batch.queries != pad).sum(1) + batch.lengths
    mini = config.local_batch_size // config.num_mini_batches
    micro = config.per_device_train_batch_size
    totals = {k: 0.0 for k in ("pg", "vf", "clipfrac", "vf_clipfrac", "approxkl", "ratio", "entropy", "tokens")}
    ratios = []
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1009 + accelerator.process_index)
    for _ in range(config.num_ppo_epochs):
        order = torch.randperm(config.local_batch_size, generator=generator)
        for start in range(0, config.local_batch_size, mini):
            indices = order[start : start + mini].to(batch.mask.device)
            indices = indices[torch.argsort(total_length[indices], stable=True)]
            tokens = accelerator.reduce(batch.mask[indices].sum().float(), "sum").item()
            scale = config.micro_batches_per_mini_batch * accelerator.num_processes / max(tokens, 1.0)
            for m in range(0, mini, micro):
                idx = indices[m : m + micro]
                part, context = trim(query_responses[idx], pad_width, batch.lengths[idx], pad)
                width = part.shape[1] - context
                mask = batch.mask[idx, :width].float()
                with accelerator.accumulate(model):
                    logits, values = model(part, context, pad, config.temperature)
                    logprobs = gathered_logprobs(logits, part[:, context:])
                    pg, pg_stats = policy_loss(
                        logprobs, batch.logprobs[idx, :width], adv.advantages[idx, :width], mask, config.cliprange
                    )
                    vf, vf_clipped = value_loss(
                        values.float(),
                        batch.values[idx, :width],
                        adv.returns[idx, :width],
                        mask,
                        config.cliprange_value,
                    )
                    accelerator.backward((pg + config.vf_coef * vf) * scale)
                    if config.max_grad_norm and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    models.optimizer.step()
                    models.optimizer.zero_grad()
                with torch.no_grad():
                    n = float(mask.sum())
                    entropy = (entropy_from_logits(logits) * mask).sum()
                    for key, value in (
                        ("pg", pg),
                        ("vf", vf),
                        ("clipfrac", pg_stats["clipfrac"]),
                        ("vf_clipfrac", vf_clipped),
                        ("approxkl", pg_stats["approxkl"]),
                        ("ratio", pg_stats["ratio"]),
                        ("entropy", entropy),
                    ):
                        totals[key] += float(value)
                    totals["tokens"] += n
                    ratios.append(float(pg_stats["ratio"]) / max(n, 1.0))
                del logits, values
    keys = list(totals)
    summed = accelerator.reduce(
        torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=batch.mask.device), "sum"
    ).tolist()
    totals = dict(zip(keys, summed, strict=True))
    n = max(totals.pop("tokens"), 1.0)
    out = {k: v / n for k, v in totals.items()}
    out["ratio_var"] = float(torch.tensor(ratios).var()) if len(ratios) > 1 else 0.0
    return out
