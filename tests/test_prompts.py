"""Prompts as every stage reads them: one form as chat messages, one id, and one text the gold rubric scores against."""

from __future__ import annotations

import json

import pytest

from pipeline.lib.errors import DataError
from pipeline.lib.prompts import load_prompts, prompt_messages, user_message
from reward.data import load_preferences
from reward.evaluate import evaluate_pairs


def test_a_non_ascii_prompt_has_one_id_in_every_stage(tmp_path):
    # PPO's prompt file and the reward model's pairs name the same prompt without an id: both hash it, to one id.
    prompt = "¿Cuánto cuesta el café? ☕"
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": prompt}) + "\n")
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"prompt": prompt, "chosen": "Dos euros.", "rejected": "No."}) + "\n"
    )
    (row,) = load_prompts(tmp_path / "prompts.jsonl")
    (pair,), _ = load_preferences(tmp_path / "pairs.jsonl")
    assert row["prompt"] == pair["prompt"] == [{"role": "user", "content": prompt}]
    assert row["prompt_id"] == pair["group_id"]


def test_the_rubric_scores_against_the_last_user_message():
    # A prompt that ends in the opening words of the reply: the rubric is asked about the request, as labelers see it.
    prompt = [
        {"role": "system", "content": "You answer the shop's email."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Dear customer,"},
    ]
    chosen, rejected = [{"role": "assistant", "content": "It ships today."}], [{"role": "assistant", "content": "No."}]
    pairs = [
        {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_ids": [1, 2],
            "rejected_ids": [1, 3],
            "rank_gap": None,
        }
    ]
    asked = []

    def rubric(request: str, reply: str) -> float:
        asked.append(request)
        return len(reply)  # the longer reply is the better

    metrics, _, _ = evaluate_pairs(pairs, {(1, 2): 1.0, (1, 3): 0.0}, rubric)
    assert asked == ["Where is my order?", "Where is my order?"]
    assert metrics["eval_gold_accuracy"] == 1.0
    assert user_message(prompt) == "Where is my order?"
    assert user_message([{"role": "system", "content": "Be brief."}]) == "Be brief."  # no user message: the last one


def test_a_prompt_becomes_chat_messages_one_way(tmp_path):
    assert prompt_messages("Hi?", "row 1") == [{"role": "user", "content": "Hi?"}]
    # A message without a role is the user's, in the prompt file PPO reads as in candidates and labeling's imports.
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "p1", "prompt": [{"content": "Hi?"}]}) + "\n")
    assert load_prompts(tmp_path / "prompts.jsonl") == [{"prompt_id": "p1", "prompt": prompt_messages("Hi?", "")}]
    for bad in (None, 7, [], ["Hi?"], [{"role": "user"}]):
        with pytest.raises(DataError, match=r"^f\.jsonl row 3: 'prompt' must be a text or a non-empty list of"):
            prompt_messages(bad, "f.jsonl row 3")
