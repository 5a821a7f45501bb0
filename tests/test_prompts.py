"""Prompts as every stage reads them: one id per prompt, whichever stage computes it."""

from __future__ import annotations

import json

from pipeline.lib.prompts import load_prompts
from reward.data import load_preferences


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
