"""Scoring with a reward model (``pipeline.lib.scoring``): each caller's read against the model's own forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.lib.scoring import last_token_scores, score_sequences


def reward_model(micro_model: str, out: Path) -> AutoModelForSequenceClassification:
    """The micro model with a seeded scalar head, saved at ``out`` as ``make rm`` saves one."""
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(micro_model, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def own_forward(model, ids: list[int]) -> float:
    """One sequence alone, unpadded, through the model's own forward: where it reads is where TRL trains the head."""
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_saved_model_scores_are_its_own_forwards_even_for_a_sequence_that_ends_in_the_pad_token(tmp_path, micro_model):
    model = reward_model(micro_model, tmp_path / "rm")
    pad = model.config.pad_token_id
    sequences = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17, pad], [20, pad, 21, 22]]
    scores = score_sequences(tmp_path / "rm", sequences + [sequences[0]], batch_size=3)
    assert len(scores) == 4  # each distinct sequence once
    for ids in sequences:
        assert scores[tuple(ids)] == pytest.approx(own_forward(model, ids), rel=1e-5, abs=1e-6), ids
    # The model's forward reads a final pad token's row at the token before it, not at the pad token itself.
    ends_in_pad = sequences[2]
    assert scores[tuple(ends_in_pad)] == pytest.approx(own_forward(model, ends_in_pad[:-1]), rel=1e-5, abs=1e-6)
    ids = torch.tensor([ends_in_pad])
    with torch.no_grad():
        at_the_pad_token = last_token_scores(model, ids, torch.ones_like(ids), torch.tensor([len(ends_in_pad) - 1]))
    assert scores[tuple(ends_in_pad)] != pytest.approx(at_the_pad_token.item(), rel=1e-3)


def test_a_left_padded_prompt_and_right_padded_reply_score_as_the_unpadded_sequence(tmp_path, micro_model):
    """PPO's rollouts: the prompt padded on the left, the reply on the right, read at the index the caller gives."""
    model = reward_model(micro_model, tmp_path / "rm")
    pad = model.config.pad_token_id
    rows = [[pad, pad, 5, 6, 7, 8, 9, pad], [10, 11, 12, 13, 14, 15, 16, 17]]
    input_ids = torch.tensor(rows)
    attention = input_ids != pad
    with torch.no_grad():
        scores = last_token_scores(model, input_ids.masked_fill(~attention, 0), attention.long(), torch.tensor([6, 7]))
    assert scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([own_forward(model, rows[0][2:7]), own_forward(model, rows[1])], rel=1e-5)
