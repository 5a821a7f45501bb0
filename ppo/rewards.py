"""Reward models as PPO reads them: one or several, each with its own tokenizer and training statistics.

A reward model that shares the policy's tokenizer scores the policy's token ids as they are. One with another
tokenizer (or chat template) gets the conversation as text: the prompt's messages and the decoded response, rendered
with its own chat template and tokenized with its own tokenizer. Scores are normalised with each model's
``reward_stats.json`` and then combined: ``mean``, ``min`` (the worst case) or ``mean - k * std``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.lib.errors import MissingInputError
from pipeline.lib.models import tokenizer_differences
from pipeline.lib.prompts import reply_suffix
from pipeline.lib.scoring import last_token_scores
from ppo.algorithm import aggregate_scores
from ppo.models import disable_dropout
from ppo.shaping import first_true, normalise_scores


@dataclass
class RewardModel:
    path: Path
    model: PreTrainedModel  # under ZeRO, the DeepSpeed engine around it, which passes attribute reads on to it
    tokenizer: PreTrainedTokenizerBase
    mean: float
    std: float
    shares_policy_tokenizer: bool
    differences: list[str] = field(default_factory=list)
    reply_suffix_ids: list[int] = field(default_factory=list)  # what its chat template writes after a reply's EOS

    def note(self) -> str | None:
        if self.shares_policy_tokenizer:
            return None
        return (
            f"{self.path}: its tokenizer differs from the policy's ({'; '.join(self.differences)}); responses are "
            "decoded and re-tokenized with its own chat template"
        )


def read_stats(model_path: Path, stats_path: str | None, normalise: bool) -> tuple[float, float]:
    candidates = (
        [Path(stats_path)]
        if stats_path
        else [model_path / "reward_stats.json", model_path.parent / "reward_stats.json"]
    )
    for path in candidates:
        if path.exists():
            stats = json.loads(path.read_text())
            return (float(stats["mean"]), float(stats["std"])) if normalise else (0.0, 1.0)
    if normalise:
        raise FileNotFoundError(
            f"normalize_rewards needs the reward model's training statistics, looked in: {[str(p) for p in candidates]}. "
            "Give --reward_stats PATH (one per reward model), or --normalize_rewards false."
        )
    return 0.0, 1.0


def load_reward_models(
    paths: list[Path],
    stats: list[str] | None,
    normalise: bool,
    policy_tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
) -> list[RewardModel]:
    """Every reward model, or an error naming the one that cannot load and why, before anything trains."""
    out = []
    for i, path in enumerate(paths):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        except (OSError, ValueError) as error:
            raise MissingInputError(
                f"reward_model_path[{i}] = {path}: cannot load a reward model there ({str(error).splitlines()[0]}). "
                "It must be a folder with a sequence-classification model (num_labels=1) and its tokenizer, as "
                "`make rm` writes to runs/<run>/rm/model."
            ) from error
        mean, std = read_stats(path, stats[i] if stats else None, normalise)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval().requires_grad_(False)
        disable_dropout(model)
        differences = tokenizer_differences(policy_tokenizer, tokenizer)
        suffix = tokenizer(reply_suffix(tokenizer), add_special_tokens=False)["input_ids"]
        out.append(RewardModel(path, model, tokenizer, mean, std, not differences, differences, suffix))
    return out


def render_for(rm: RewardModel, prompt: list[dict[str, str]], response: str) -> str:
    """The conversation as the reward model reads it: its own chat template, or plain text without one."""
    messages = [*prompt, {"role": "assistant", "content": response}]
    if rm.tokenizer.chat_template:
        text = rm.tokenizer.apply_chat_template(messages, tokenize=False)
        assert isinstance(text, str)  # tokenize=False renders text; transformers annotates every mode's result alike
        return text
    return "\n\n".join(m["content"] for m in messages)


@torch.no_grad()
def score_with(
    rm: RewardModel,
    query_responses: torch.Tensor,
    policy_pad: int,
    prompts: list[list[dict]],
    responses_text: list[str],
    context_length: int,
) -> torch.Tensor:
    """Raw scores ``[B]`` of one reward model on truncated rollouts."""
    device = query_responses.device
    if rm.shares_policy_tokenizer:
        eos = rm.tokenizer.eos_token_id
        ids, last = with_reply_suffix(query_responses, policy_pad, context_length, rm.reply_suffix_ids, eos)
        attention = ids != policy_pad
        return last_token_scores(rm.model, ids.masked_fill(~attention, 0), attention.long(), last)
    texts = [render_for(rm, p, r) for p, r in zip(prompts, responses_text, strict=True)]
    batch = rm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right").to(
        device
    )
    last = batch["attention_mask"].sum(1) - 1
    return last_token_scores(rm.model, batch["input_ids"], batch["attention_mask"], last)


def with_reply_suffix(
    query_responses: torch.Tensor, pad: int, context_length: int, suffix: list[int], eos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rollouts as the chat template writes a finished conversation (each reply that ended with EOS followed by
    ``suffix``, e.g. ChatML's newline), and the index of each one's last token, where the reward model reads."""
    last = context_length + first_true(query_responses[:, context_length:] == pad) - 1
    if not suffix:
        return query_responses, last
    ids = torch.cat([query_responses, query_responses.new_full((len(query_responses), len(suffix)), pad)], dim=1)
    ended = ids[torch.arange(len(ids), device=ids.device), last] == eos
    tail = torch.tensor(suffix, dtype=ids.dtype, device=ids.device)
    for row in ended.nonzero().flatten().tolist():
        start = int(last[row]) + 1
        ids[row, start : start + len(suffix)] = tail
    return ids, last + ended.long() * len(suffix)


def combine(raw: torch.Tensor, models: list[RewardModel], how: str, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised scores per model ``[M, B]`` and their aggregate ``[B]``."""
    normalised = torch.stack([normalise_scores(raw[i], m.mean, m.std) for i, m in enumerate(models)])
    return normalised, aggregate_scores(normalised, how, k) if len(models) > 1 else normalised[0]
