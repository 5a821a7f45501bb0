"""Prompts as every stage reads them: one id per prompt, and one text that the gold rubric scores against."""

from __future__ import annotations

import json

from pipeline.lib.prompts import load_prompts, user_message
from reward.data import load_preferences
from reward.train import evaluate_pairs


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
