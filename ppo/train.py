"""Stage 4, PPO: ``make ppo`` (``accelerate launch -m ppo.train --config configs/ppo.yaml``).

The policy (from the run's SFT model) is optimised against one or more reward models, with a critic initialised from
the reward model, a per-token KL penalty to the reference (the SFT model, or the policy with its LoRA adapter off),
GAE and PPO's clipped losses. Each step: generate rollouts; score them; compute reference log-probs and values;
rewards and advantages; PPO epochs over mini-batches. The math is in ``ppo/algorithm.py``; this file is the recipe.
Checked against TRL 1.12's PPOTrainer on the same work (``make bench``, case ``ppo``; see the README).

Writes ``runs/<run>/ppo/``: ``model/`` (loads with AutoModelForCausalLM; LoRA merged unless ``merge_lora: false``),
``checkpoints/`` (resume with ``RESUME=1``: the same prompts, samples and updates as an uninterrupted run),
``snapshots/`` (the policy at ``snapshots`` evenly spaced steps, saved as ``model/`` is, for the evaluation),
``history.jsonl`` (every step since the run began, across resumes), config.yaml and summary.json.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, get_scheduler
from trl.models.utils import unwrap_model_for_generation

from pipeline.lib import runs
from pipeline.lib.errors import OutOfMemory, exit_with
from pipeline.lib.launch import configure_cpu_deepspeed, release_zero3_init
from pipeline.lib.models import save_here
from pipeline.lib.prompts import load_prompts, user_message
from pipeline.lib.rubric import load_rubric
from pipeline.lib.stage import ModelArguments, RunArguments, Stage, finish_model, parse, weights_dir
from pipeline.lib.tracking import Tracker
from ppo import checkpoint, rewards
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
from ppo.config import PPOStageConfig
from ppo.data import PromptOrder, left_pad, sample_seeds, tokenize_prompts
from ppo.models import (
    PolicyAndValue,
    add_value_adapters,
    count_parameters,
    disable_dropout,
    optimizer_groups,
    response_logits,
    response_values,
)
from ppo.rollout import VLLMGenerator, check_vllm_available, hf_generate, truncate_after_stop
from ppo.shaping import AdaptiveKLController, first_true, length_penalty, response_lengths

OOM_ADVICE = (
    "Out of memory. To use less: LoRA (--use_lora true: no separate reference model), ZeRO-3 (make ppo ZERO=3), "
    "a smaller rollout (--per_device_train_batch_size / --gradient_accumulation_steps), a shorter --response_length, "
    "or a smaller --local_rollout_forward_batch_size."
)


@dataclass
class Models:
    """Everything the loop computes with; ``model`` is the trained policy + critic (prepared by accelerate)."""

    model: torch.nn.Module
    ref: torch.nn.Module | None  # None with LoRA: the policy with its adapter disabled
    reward_models: list[rewards.RewardModel]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kl: AdaptiveKLController
    generator: VLLMGenerator | None
    parameters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """Parameter counts and each reward model's normalisation, for summary.json."""
        normalisation = [{"path": str(m.path), "mean": m.mean, "std": m.std} for m in self.reward_models]
        return {**self.parameters, "reward_normalisation": normalisation}


@dataclass
class Batch:
    """One process's rollouts of a step, and everything computed from them (``[B, R]`` unless noted)."""

    rows: list[dict]
    queries: torch.Tensor  # [B, Q], left-padded
    responses: torch.Tensor  # truncated after the stop token, right-padded
    logprobs: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor  # [B]
    texts: list[str] = field(default_factory=list)
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None  # [B], what PPO optimises
    member_scores: torch.Tensor | None = None  # [M, B], normalised, one row per reward model
    raw_scores: torch.Tensor | None = None  # [M, B]
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    non_score: torch.Tensor | None = None


@dataclass
class Snapshots:
    """The run's policy snapshots (``ppo.checkpoint``): their folder, the steps they are saved after, and those
    written so far (kept across a resume; the writing process's list)."""

    dir: Path
    steps: list[int]
    model_args: ModelArguments  # LoRA: the snapshot is saved and merged as the final policy is
    written: list[dict] = field(default_factory=list)


class Timer:
    """Seconds per phase of the step, as verl's ``marked_timer`` keeps them (GPU work included: it synchronises)."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start


def main(run: RunArguments, model_args: ModelArguments, config: PPOStageConfig) -> dict[str, Any]:
    configure_cpu_deepspeed()  # gloo for DeepSpeed on CPU, before accelerate picks a backend
    accelerator = Accelerator(
        gradient_accumulation_steps=config.micro_batches_per_mini_batch,
        mixed_precision="bf16" if config.bf16 else "no",
    )
    stage = Stage(
        "ppo", run.run, run.runs_dir, [run, model_args, config], config.report_to, accelerator.is_main_process
    )
    set_seed(config.seed)

    # step 1. inputs: the policy (SFT), the reward models and their statistics, the prompts; then the models.
    runs.require_path("prompts", config.prompts)
    sft_path = runs.stage_output(run.run, "sft", run.runs_dir, model_args.model_name_or_path)
    rm_paths = [
        path for p in config.reward_model_path or [None] for path in runs.reward_models(run.run, run.runs_dir, p)
    ]
    config.check_reward_models(rm_paths)
    if config.generation_backend == "vllm":
        check_vllm_available()
    tokenizer = AutoTokenizer.from_pretrained(sft_path, padding_side="left")
    prompts = load_ppo_prompts(config, accelerator, tokenizer)
    rubric = load_rubric(config.rubric)
    if rubric is not None:  # said out loud: a rubric written for other prompts would score these silently
        accelerator.print(f"[ppo] gold rubric {config.rubric} scores every rollout (rollout/gold_score)")
    models = build_models(config, model_args, accelerator, sft_path, rm_paths, tokenizer)

    # step 2. resume: the latest checkpoint's weights, optimizer, schedule, KL coefficient, history and snapshots.
    settings = checkpoint.trajectory_settings(run, model_args, config)
    progress = resume(config, accelerator, settings) if run.resume else Progress(settings=settings)
    snapshots = open_snapshots(config, accelerator, model_args, stage.dir / "snapshots", progress.step)

    # step 3. train: each step generates, scores and learns from processes x local_batch_size rollouts.
    train(config, accelerator, models, prompts, tokenizer, rubric, progress, stage.tracker, snapshots)

    # step 4. save the policy and the critic (gathered under ZeRO-3), then free the training models.
    save_policy(config, accelerator, models, stage.dir, stage.weights_dir(model_args))
    extra = {"final_kl_coef": models.kl.value, "prompts_dropped_too_long": prompts.dropped, **models.figures()}
    notes = models.notes
    del models  # the LoRA merge loads the base model once more: without this, that would be the run's peak
    accelerator.free_memory()
    gc.collect()
    if is_writer(config, accelerator):
        stage.finish_model(model_args, sft_path, tokenizer)
        finish_snapshots(snapshots, sft_path, tokenizer, progress)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}

    # step 5. finish: the history and summary of every step since the run began, and the tracker.
    checkpoint.write_history(stage.dir / "history.jsonl", progress.history)
    metrics = {
        **ppo_metrics(progress.history),
        "global_step": progress.step,
        "episodes": progress.episode,
        "resumed_at_steps": progress.resumed_at,
        "gold_rubric": config.rubric,
        **extra,
    }
    inputs = {"sft_model": sft_path, **{f"reward_model_{i}": p for i, p in enumerate(rm_paths)}}
    outputs = {name: stage.dir / name for name in ("model", "value_model", "snapshots")}
    return stage.finish(
        metrics=metrics,
        inputs={**inputs, "prompts": prompts.path},
        outputs={**outputs, "history": stage.dir / "history.jsonl", "checkpoints": config.output_dir},
        extra={"notes": notes},
        headline=f"{progress.episode} episodes | score {metrics.get('score_first', 0):.3f} -> "
        f"{metrics.get('score_last', 0):.3f} | kl {metrics.get('kl_last', 0):.3f}",
    )


def train(
    config, accelerator, models, prompts, tokenizer, rubric, progress: Progress, tracker: Tracker, snapshots: Snapshots
) -> None:
    """Steps until ``total_episodes``, from where ``progress`` is, with a progress bar."""
    num_steps = total_steps(config, accelerator)
    bar = tqdm_steps(accelerator, progress.step, num_steps)
    try:
        while progress.step < num_steps:
            metrics = train_step(
                config, accelerator, models, prompts, tokenizer, rubric, progress, tracker, num_steps, snapshots
            )
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
    except torch.OutOfMemoryError as err:
        raise OutOfMemory(OOM_ADVICE) from err
    bar.close()


def train_step(
    config: PPOStageConfig,
    accelerator: Accelerator,
    models: Models,
    prompts: Prompts,
    tokenizer,
    rubric,
    progress: Progress,
    tracker: Tracker,
    num_steps: int,
    snapshots: Snapshots,
) -> dict[str, float]:
    """One PPO step, its metrics, the KL coefficient's update, logging, the snapshot and the checkpoint."""
    step, world_batch, timer = progress.step, config.local_batch_size * accelerator.num_processes, Timer()
    with timer("step"):
        positions = prompts.order.positions(
            step, accelerator.process_index, accelerator.num_processes, config.local_batch_size
        )
        # Rows by prompt length: the chunks of the rollout then pad less. A row's sample depends on its seed alone.
        positions = sorted(positions, key=lambda p: len(prompts.train_ids[prompts.order.prompt_at(p)]))
        picked = [prompts.order.prompt_at(p) for p in positions]
        # phases 1-3. generate, score, reference log-probs and values.
        batch = rollout(
            config,
            accelerator,
            models,
            tokenizer,
            [prompts.train_rows[i] for i in picked],
            [prompts.train_ids[i] for i in picked],
            sample_seeds(config.seed, positions),
            timer,
        )
        # phase 4. rewards and advantages.
        with timer("advantages"):
            compute_advantages(config, accelerator, models.kl.value, batch)
        # phase 5. PPO epochs over mini-batches.
        with timer("optimisation"):
            stats = optimise(config, accelerator, models, batch, tokenizer.pad_token_id, step)
        models.scheduler.step()
        gc.collect()  # generation leaves reference cycles; collected each step, they never add up to a peak
    progress.step, progress.episode = step + 1, progress.episode + world_batch
    metrics = step_metrics(config, accelerator, models, batch, stats, timer, rubric, tokenizer)
    elapsed = progress.elapsed_before + time.perf_counter() - progress.started
    metrics.update(
        episode=progress.episode,
        lr=models.scheduler.get_last_lr()[0],
        elapsed_s=elapsed,
        eps=progress.episode / max(elapsed, 1e-9),
    )
    models.kl.update(metrics["objective/kl"], n_steps=world_batch)  # takes effect from the next step
    progress.history.append({"step": progress.step, **metrics})
    if progress.step % config.logging_steps == 0:
        tracker.log({f"train/{k}": v for k, v in metrics.items()}, step=progress.step)
    every = max(1, num_steps // config.num_sample_generations) if config.num_sample_generations else 0
    if every and step % every == 0:
        log_samples(config, accelerator, models, tokenizer, prompts, tracker, progress.step)
    # The snapshot before the checkpoint: a resume from this step then finds it listed, and never misses it.
    if progress.step in snapshots.steps:
        save_snapshot(config, accelerator, models, snapshots, progress)
    if config.checkpoint_steps and progress.step % config.checkpoint_steps == 0 and progress.step < num_steps:
        meta = {
            "global_step": progress.step,
            "episode": progress.episode,
            "resumed_at": progress.resumed_at,
            "elapsed_s": elapsed,
            "settings": progress.settings,
        }
        checkpoint.save(
            accelerator,
            Path(config.output_dir) / f"checkpoint-{progress.step}",
            meta,
            progress.history,
            config.checkpoints_to_keep,
        )
    return metrics


@dataclass
class Prompts:
    train_rows: list[dict]
    train_ids: list[list[int]]
    eval_rows: list[dict]
    eval_ids: list[list[int]]
    dropped: int
    path: Path
    order: PromptOrder


@dataclass
class Progress:
    """Where the run is: its step, episodes and the history of every step since it began (across resumes)."""

    step: int = 0
    episode: int = 0
    history: list[dict] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    elapsed_before: float = 0.0  # training seconds before the last resume
    started: float = field(default_factory=time.perf_counter)
    settings: dict[str, Any] = field(default_factory=dict)  # what the run computes with: checked on resume


def load_ppo_prompts(config: PPOStageConfig, accelerator: Accelerator, tokenizer) -> Prompts:
    rows, path = load_prompts(config.prompts, config.num_prompts), config.prompts
    train_rows, train_ids, dropped = tokenize_prompts(rows[config.eval_prompts :], tokenizer, config.max_prompt_length)
    eval_rows, eval_ids, _ = tokenize_prompts(rows[: config.eval_prompts], tokenizer, config.max_prompt_length)
    return Prompts(
        train_rows, train_ids, eval_rows, eval_ids, dropped, path, PromptOrder(len(train_rows), config.seed)
    )


def total_steps(config: PPOStageConfig, accelerator: Accelerator) -> int:
    """PPO steps in the run: each takes local_batch_size rollouts on every process."""
    return -(-config.total_episodes // (config.local_batch_size * accelerator.num_processes))


def open_snapshots(
    config: PPOStageConfig, accelerator: Accelerator, model_args: ModelArguments, directory: Path, step: int
) -> Snapshots:
    """Where the snapshots go and after which steps, with those a resume from ``step`` keeps."""
    written = checkpoint.keep_snapshots(directory, step) if is_writer(config, accelerator) else []
    steps = checkpoint.snapshot_steps(total_steps(config, accelerator), config.snapshots)
    return Snapshots(directory, steps, model_args, written)


def resume(config: PPOStageConfig, accelerator: Accelerator, settings: dict[str, Any]) -> Progress:
    path, meta, history = checkpoint.latest(config.output_dir, settings)
    accelerator.load_state(str(path / "accelerate"))
    step = meta["global_step"]
    accelerator.print(f"[ppo] resuming from {path} at step {step}, episode {meta['episode']}")
    resumed_at = [*meta["resumed_at"], step]
    return Progress(step, meta["episode"], history[:step], resumed_at, meta.get("elapsed_s", 0.0), settings=settings)


# ---------------------------------------------------------------------------------------------------------------
# Set-up


def build_models(
    config: PPOStageConfig,
    model_args: ModelArguments,
    accelerator: Accelerator,
    sft_path: Path,
    rm_paths: list[Path],
    tokenizer,
) -> Models:
    frozen_dtype = torch.bfloat16 if config.bf16 else torch.float32
    reward_models = rewards.load_reward_models(
        rm_paths, config.reward_stats, config.normalize_rewards, tokenizer, frozen_dtype
    )
    notes = [note for rm in reward_models if (note := rm.note())]
    value_path = config.value_model_path or (rm_paths[0] if reward_models[0].shares_policy_tokenizer else sft_path)
    if value_path == sft_path and not config.value_model_path:
        notes.append(
            "the critic starts from the SFT model with a new scalar head: the reward model's tokenizer "
            "differs from the policy's"
        )

    policy = AutoModelForCausalLM.from_pretrained(sft_path)
    value_model = AutoModelForSequenceClassification.from_pretrained(value_path, num_labels=1)
    value_model.config.pad_token_id = tokenizer.pad_token_id
    ref = None if model_args.use_lora else AutoModelForCausalLM.from_pretrained(sft_path, dtype=frozen_dtype)
    if model_args.use_lora:
        from peft import get_peft_model

        policy = get_peft_model(policy, model_args.peft_config("CAUSAL_LM"))
        if config.value_lora:
            add_value_adapters(value_model, model_args.peft_config("SEQ_CLS", exclude_modules=["score"]))
    for module in (policy, value_model, ref):
        if module is not None:
            disable_dropout(module)
    if config.gradient_checkpointing:
        for module in (policy, value_model):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    parameters = {
        "policy_parameters": count_parameters(policy),
        "value_parameters": count_parameters(value_model),
        "value_trainable_parameters": count_parameters(value_model, trainable=True),
    }

    model = PolicyAndValue(policy, value_model)
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, config.weight_decay),
        fused=True,  # one kernel for all weights: on the 4M-parameter demo model 0.011 s a step instead of 0.039 s
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )
    num_steps = total_steps(config, accelerator)
    scheduler = get_scheduler(
        config.lr_scheduler_type,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * num_steps),
        num_training_steps=num_steps,
    )
    fill_deepspeed_config(config, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    kl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon, adaptive=config.adaptive_kl)
    accelerator.register_for_checkpointing(scheduler, kl)

    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
    if deepspeed:
        from trl.models.utils import prepare_deepspeed

        ref = prepare_deepspeed(ref, accelerator) if ref is not None else None
        for rm in reward_models:
            rm.model = prepare_deepspeed(rm.model, accelerator)
    else:
        ref = ref.to(accelerator.device).eval() if ref is not None else None
        for rm in reward_models:
            rm.model = rm.model.to(accelerator.device)
    generator = None
    if config.generation_backend == "vllm":
        generator = VLLMGenerator(
            sft_path, tokenizer, config, model_args.use_lora, config.seed + accelerator.process_index
        )
    return Models(model, ref, reward_models, optimizer, scheduler, kl, generator, parameters, notes)


def fill_deepspeed_config(config: PPOStageConfig, accelerator: Accelerator) -> None:
    """The DeepSpeed JSON's "auto" batch sizes and clipping, from the stage config: accelerate fills them from a
    prepared dataloader, and this loop prepares none (its prompt order is its own, for exact resume)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    values = {
        "train_micro_batch_size_per_gpu": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.micro_batches_per_mini_batch,
        "train_batch_size": config.per_device_train_batch_size
        * config.micro_batches_per_mini_batch
        * accelerator.num_processes,
        "gradient_clipping": config.max_grad_norm or 0.0,
    }
    for key, value in values.items():
        if plugin.deepspeed_config.get(key, "auto") == "auto":
            plugin.deepspeed_config[key] = value


def tqdm_steps(accelerator: Accelerator, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="ppo", unit="step", disable=not accelerator.is_local_main_process)


# ---------------------------------------------------------------------------------------------------------------
# The phases of a step


def rollout(
    config: PPOStageConfig,
    accelerator: Accelerator,
    models: Models,
    tokenizer,
    rows: list[dict],
    prompt_ids: list[list[int]],
    seeds: torch.Tensor,
    timer: Timer,
) -> Batch:
    """Phase 1-3: generate the responses, score them, and compute the reference log-probs and the values."""
    pad, device = tokenizer.pad_token_id, accelerator.device
    stop = tokenizer.eos_token_id if config.stop_token == "eos" else None
    queries = left_pad(prompt_ids, pad).to(device)
    chunk = config.local_rollout_forward_batch_size
    generation_chunk = config.generation_batch_size or len(queries)
    unwrapped = accelerator.unwrap_model(models.model)

    # phase 1. generate: the policy's weights are gathered once for the whole rollout under ZeRO-3.
    with timer("generation"):
        unwrapped.eval()
        responses, logprobs = [], []
        if models.generator is not None:
            with unwrap_model_for_generation(models.model, accelerator) as gathered:
                models.generator.push(gathered.policy)  # the last update's weights (with LoRA: the adapter only)
            responses = [models.generator.generate(queries, seeds, pad, stop)]
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
                    responses.append(out)
                    logprobs.append(logp)
        width = max(r.shape[1] for r in responses)
        responses = torch.cat([pad_right(r, width, pad) for r in responses])
        responses = truncate_after_stop(responses, stop, pad)
    if stop is not None:
        lengths = response_lengths(responses, stop, pad)
    else:
        lengths = first_true(responses == pad)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    batch = Batch(rows, queries, responses, None, mask, lengths, texts)
    query_responses = torch.cat([queries, responses], dim=1)

    ref_logprobs, values, raw = [], [], []
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
    batch.logprobs = torch.cat([pad_right(lp, width, 0.0) for lp in logprobs]) * mask
    batch.ref_logprobs = torch.cat(ref_logprobs) * mask
    batch.values = torch.cat(values) * mask
    batch.raw_scores = torch.cat(raw, dim=1)

    # The score PPO optimises: each model's normalised score, combined; a per-token length cost; the EOS penalty.
    batch.member_scores, scores = rewards.combine(
        batch.raw_scores, models.reward_models, config.reward_aggregation, config.reward_std_coef
    )
    scores = scores - length_penalty(lengths, config.length_penalty)
    if config.missing_eos_penalty is not None:
        ended = (responses == tokenizer.eos_token_id).any(dim=1)
        scores = torch.where(ended, scores, scores - config.missing_eos_penalty)
    batch.scores = scores
    unwrapped.train()
    return batch


def compute_advantages(config: PPOStageConfig, accelerator: Accelerator, kl_coef: float, batch: Batch) -> None:
    """Phase 4: per-token rewards (KL penalty, score at the last token), GAE, and advantages whitened over every
    process's rollouts (so two processes compute what one would)."""
    mask = batch.mask.float()
    batch.kl = kl_per_token(batch.logprobs, batch.ref_logprobs, config.kl_estimator) * mask
    last = (batch.lengths - 1).clamp(min=0)
    token_reward, batch.non_score = token_rewards(batch.kl, batch.scores, last, kl_coef, mask)
    if config.whiten_rewards:
        token_reward = whiten(token_reward, mask, global_sums(accelerator, token_reward, mask), shift_mean=False)
    advantages, batch.returns = gae(token_reward, batch.values, mask, config.gamma, config.lam)
    batch.advantages = whiten(advantages, mask, global_sums(accelerator, advantages, mask))


def optimise(
    config: PPOStageConfig, accelerator: Accelerator, models: Models, batch: Batch, pad: int, step: int
) -> dict[str, float]:
    """Phase 5: ``num_ppo_epochs`` passes over the rollouts in mini-batches, each one optimiser step.

    A mini-batch's loss is the mean over its tokens on every process: each micro-batch's summed loss is divided by
    the mini-batch's token count, so batch 1 x accumulation 8 makes the same update as batch 8 x 1, and two
    processes the update of one. (accelerate divides by the accumulation steps, DDP averages over processes: the
    factor below undoes both.)
    """
    model, pad_width = models.model, batch.queries.shape[1]
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
                        logprobs, batch.logprobs[idx, :width], batch.advantages[idx, :width], mask, config.cliprange
                    )
                    vf, vf_clipped = value_loss(
                        values.float(),
                        batch.values[idx, :width],
                        batch.returns[idx, :width],
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


# ---------------------------------------------------------------------------------------------------------------
# Helpers of the phases


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


def step_metrics(
    config: PPOStageConfig,
    accelerator: Accelerator,
    models: Models,
    batch: Batch,
    stats: dict[str, float],
    timer: Timer,
    rubric,
    tokenizer,
) -> dict[str, float]:
    """TRL's PPO metric names, plus the rollout figures, the per-model scores and the phase timings."""

    def mean(value: torch.Tensor) -> float:
        return accelerator.reduce(value.float().mean().detach(), "mean").item()

    mask = batch.mask.float()
    metrics = {
        "objective/kl": mean(batch.kl.sum(1)),
        "objective/entropy": mean((-batch.logprobs * mask).sum(1)),
        "objective/non_score_reward": mean(batch.non_score.sum(1)),
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
def log_samples(
    config: PPOStageConfig,
    accelerator: Accelerator,
    models: Models,
    tokenizer,
    prompts: Prompts,
    tracker: Tracker,
    step: int,
) -> None:
    """A table of greedy replies to the held-out prompts, with their scores, for the dashboards."""
    rows, ids = prompts.eval_rows, prompts.eval_ids
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
    tracker.log_table(
        "samples",
        ["step", "prompt", "response", "score"],
        [[step, user_message(r["prompt"]), t, float(s)] for r, t, s in zip(rows[:n], texts, scores, strict=True)],
        step=step,
    )


def is_writer(config: PPOStageConfig, accelerator: Accelerator) -> bool:
    return accelerator.is_local_main_process if config.save_on_each_node else accelerator.is_main_process


def full_state_dict(config: PPOStageConfig, accelerator: Accelerator, model: torch.nn.Module) -> dict:
    """The whole model's weights where they are written. Under ZeRO-3 accelerate gathers them on global rank 0 only;
    with ``save_on_each_node`` every node writes, so each weight is gathered on every process in turn."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if not (config.save_on_each_node and plugin is not None and plugin.zero_stage == 3):
        return accelerator.get_state_dict(model)
    import deepspeed

    state = {}
    for name, param in accelerator.unwrap_model(model).named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            state[name] = param.detach().cpu().clone()
    return state


def save_policy(
    config: PPOStageConfig, accelerator: Accelerator, models: Models, stage_dir: Path, policy_dir: Path
) -> None:
    """The policy's weights (its adapters with LoRA) and the critic; every process takes part (ZeRO-3 gathers)."""
    state_dict = full_state_dict(config, accelerator, models.model)
    release_zero3_init()
    if is_writer(config, accelerator):
        unwrapped = accelerator.unwrap_model(models.model)
        save_here(unwrapped.policy, policy_dir, state_dict=part_of(state_dict, "policy."))
        # The critic too, to continue from or to inspect (with LoRA: its adapters and head included).
        save_here(unwrapped.value_model, stage_dir / "value_model", state_dict=part_of(state_dict, "value_model."))
    accelerator.wait_for_everyone()


def part_of(state_dict: dict, prefix: str) -> dict:
    """The weights of one part of ``PolicyAndValue`` (``policy.``, ``value_model.``), under that part's own names."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def save_snapshot(
    config: PPOStageConfig, accelerator: Accelerator, models: Models, snapshots: Snapshots, progress: Progress
) -> None:
    """The policy's weights at this step, as ``save_policy`` writes them (its adapters with LoRA), listed in the
    index; every process takes part (ZeRO-3 gathers). ``finish_snapshots`` makes them plain models."""
    state_dict = full_state_dict(config, accelerator, models.model)
    if is_writer(config, accelerator):
        policy = accelerator.unwrap_model(models.model).policy
        folder = checkpoint.snapshot_dir(snapshots.dir, progress.step)
        save_here(policy, weights_dir(folder, snapshots.model_args), state_dict=part_of(state_dict, "policy."))
        snapshots.written = checkpoint.add_snapshot(snapshots.dir, snapshots.written, progress.step, progress.episode)
    del state_dict
    accelerator.wait_for_everyone()


def finish_snapshots(snapshots: Snapshots, sft_path: Path, tokenizer, progress: Progress) -> None:
    """Each snapshot a model folder as ``model/`` is (LoRA merged into the SFT model, the tokenizer beside it), once
    the training models are freed, as the final policy's merge is; then the index of the finished run."""
    for entry in snapshots.written:
        folder = checkpoint.snapshot_dir(snapshots.dir, entry["step"])
        finish_model(folder, snapshots.model_args, sft_path, tokenizer)
    checkpoint.close_snapshots(snapshots.dir, snapshots.written, progress.step, progress.episode)


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


if __name__ == "__main__":
    exit_with(lambda: main(*parse(PPOStageConfig, "ppo")))
