"""Scoring with a reward model: its scalar at each sequence's last token, read one way by every stage that scores.

``last_token_scores`` runs the backbone on the whole sequences and the scalar head on one position each: the index
the caller gives. ``score_sequences`` scores lists of token ids with a saved model (the reward-model stage's held-out
figures, active selection), reading where ``AutoModelForSequenceClassification`` reads and so where TRL's
``RewardTrainer`` trained the head. PPO and the evaluation score their rollouts through ``ppo.rewards``, which finds
each rollout's last token itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel


def last_token_scores(
    reward_model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor
) -> torch.Tensor:
    """The reward model's scalar at each sequence's last token (its head runs on that position only)."""
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    positions = attention_mask.cumsum(1) - attention_mask.long()
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    picked = hidden[torch.arange(len(hidden), device=hidden.device), last_index]
    head = reward_model.get_submodule("score")  # the scalar head of AutoModelForSequenceClassification
    return head(picked).squeeze(-1).float()


def last_non_pad_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Each row's rightmost token that is not the pad token: where ``AutoModelForSequenceClassification`` reads. Where
    the pad token is also EOS, that is the token before a final EOS."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def score_sequences(model_dir: Path, sequences: list[list[int]], batch_size: int) -> dict[tuple[int, ...], float]:
    """The saved reward model's score of each distinct sequence, loaded fresh as PPO will load it."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    pad = model.config.pad_token_id
    distinct = sorted({tuple(s) for s in sequences}, key=len)  # similar lengths side by side: little padding
    scores: dict[tuple[int, ...], float] = {}
    for start in tqdm(range(0, len(distinct), batch_size), desc="scoring", unit="batch"):
        batch = distinct[start : start + batch_size]
        ids = [torch.tensor(s) for s in batch]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=pad).to(device)
        attention_mask = pad_sequence([torch.ones_like(s) for s in ids], batch_first=True).to(device)
        with torch.inference_mode():
            batch_scores = last_token_scores(model, input_ids, attention_mask, last_non_pad_index(input_ids, pad))
        scores.update(zip(batch, batch_scores.cpu().tolist(), strict=True))
    return scores
