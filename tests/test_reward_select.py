"""Active selection (``reward.select``): the priorities by hand-worked values, and the command on a tiny ensemble,
its output read by the labeling import, and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from labeling_ui.config import LabelingConfig
from labeling_ui.storage import LabelStore
from pipeline.lib.errors import MissingInputError
from reward.select import (
    SelectionConfig,
    disagreement_priority,
    main,
    random_priority,
    round_priorities,
    uncertainty_priority,
)
from tests.conftest import read_jsonl

# Two members, three replies. Member A scores (1, 0, 0), member B (0, 0, 1). The margins of the pairs (0,1), (0,2),
# (1,2) are A: 1, 1, 0 and B: 0, -1, -1.
SCORES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_disagreement_is_the_mean_std_of_the_members_margins_hand_worked():
    # Per pair, the std (ddof 0) of two values is half their distance: 0.5, 1, 0.5; the mean is 2/3.
    assert disagreement_priority(SCORES) == pytest.approx(2 / 3)
    shifted = SCORES + np.array([[0.0], [5.0]])  # member B scores everything 5 higher: its margins are the same
    assert disagreement_priority(shifted) == pytest.approx(2 / 3)
    assert disagreement_priority(np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])) == 0.0  # agreeing members


def test_uncertainty_is_how_near_even_odds_the_mean_preference_is_hand_worked():
    s = 1 / (1 + math.exp(-1))  # sigmoid(1) = 0.7311
    # Mean P per pair: (s + 0.5) / 2, (s + 1 - s) / 2 = 0.5, (0.5 + 1 - s) / 2; 1 - |2p - 1| of each.
    p = [(s + 0.5) / 2, 0.5, (0.5 + 1 - s) / 2]
    expected = sum(1 - abs(2 * x - 1) for x in p) / 3
    assert expected == pytest.approx(0.84596, abs=1e-5)
    assert uncertainty_priority(SCORES) == pytest.approx(expected)
    assert uncertainty_priority(np.array([[10.0, 0.0], [12.0, 0.0]])) < 1e-4  # both sure: no doubt to resolve


def test_round_priorities_are_quantiles_above_every_earlier_round():
    assert round_priorities([0.3, 0.1, 0.3, 0.2], 2) == [1.5, 1.0, 1.5, 1.25]
    assert round_priorities([7.0], 1) == [0.0]
    values = [random_priority(f"p{i}", seed=1) for i in range(200)]
    assert all(0 <= v < 1 for v in values) and len(set(values)) == 200
    assert values == [random_priority(f"p{i}", seed=1) for i in range(200)]  # the same in every process
    assert values != [random_priority(f"p{i}", seed=2) for i in range(200)]  # another round, another subset


def make_members(micro_model: str, stage: Path, n: int) -> list[Path]:
    """An ensemble folder as ``make rm`` leaves it: members with their own (seeded) score heads, ensemble.json."""
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        model = AutoModelForSequenceClassification.from_pretrained(micro_model, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        out = stage / "members" / str(i) / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        dirs.append(out)
    (stage / "ensemble.json").write_text(json.dumps({"members": [f"members/{i}/model" for i in range(n)]}))
    return dirs


def candidate_rows(n: int) -> list[dict]:
    return [
        {
            "prompt_id": f"p{i}",
            "prompt": [{"role": "user", "content": f"Where is my order number {i}?"}],
            "candidates": [f"It ships on day {i + j}." for j in range(3)],
        }
        for i in range(n)
    ]


def direct_score(member: Path, row: dict, text: str) -> float:
    """One reply scored without the project's code: the chat template, one forward pass, the last position."""
    tokenizer = AutoTokenizer.from_pretrained(member)
    model = AutoModelForSequenceClassification.from_pretrained(member).eval()
    ids = tokenizer.apply_chat_template([*row["prompt"], {"role": "assistant", "content": text}], return_dict=True)
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids["input_ids"]])).logits[0, 0])


def test_select_gives_each_item_its_ensemble_disagreement_and_the_import_reads_it(tmp_path, micro_model):
    members = make_members(micro_model, tmp_path / "r1" / "rm", 2)
    source = tmp_path / "candidates.jsonl"
    rows = candidate_rows(6)
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = SelectionConfig(
        run="r2", runs_dir=str(tmp_path), candidates=str(source), reward_models=str(tmp_path / "r1" / "rm"), round=2
    )
    summary = main(config)
    out = read_jsonl(Path(summary["outputs"]["candidates"]))
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]  # the input's order, every row
    assert summary["metrics"]["members"] == 2 and summary["metrics"]["by"] == "disagreement"
    first = rows[0]
    scores = np.array([[direct_score(m, first, t) for t in first["candidates"]] for m in members])
    assert out[0]["selection_score"] == pytest.approx(disagreement_priority(scores), rel=1e-4)
    assert all(1 <= r["priority"] < 2 for r in out)  # round 2: above every round-1 leftover
    by_score = sorted(out, key=lambda r: r["selection_score"])
    assert [r["priority"] for r in by_score] == sorted(r["priority"] for r in out)
    assert len({r["selection_score"] for r in out}) == 6  # the random heads disagree differently per item

    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}", LabelingConfig(overlap=1, gold_rate=0.0))
    try:
        store.import_candidates(out)
        store.add_user("ana", "password1")
        view = store.next_item("ana")
        assert view.prompt == by_score[-1]["prompt"][0]["content"]  # the most disputed item is handed out first
    finally:
        store.close()


def test_select_without_an_ensemble_says_what_to_train(tmp_path, micro_model):
    source = tmp_path / "candidates.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in candidate_rows(2)))
    with pytest.raises(MissingInputError, match="make rm"):
        main(SelectionConfig(run="none", runs_dir=str(tmp_path), candidates=str(source)))
    single = tmp_path / "single" / "rm"
    make_members(micro_model, single, 1)
    (single / "ensemble.json").unlink()
    (single / "members" / "0" / "model").rename(single / "model")
    with pytest.raises(ValueError, match=r"needs a reward-model ensemble .* holds one model.*ensemble: 3"):
        main(SelectionConfig(run="x", runs_dir=str(tmp_path), candidates=str(source), reward_models=str(single)))
    with pytest.raises(ValueError, match="by: 'loudest' is not one of"):
        SelectionConfig(by="loudest")
    by_random = main(SelectionConfig(run="x", runs_dir=str(tmp_path), candidates=str(source), by="random"))
    assert by_random["metrics"]["members"] == 0  # no model loaded: the baseline needs none
