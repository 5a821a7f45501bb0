"""Reading preference data: TRL's explicit and implicit formats, Anthropic HH-RLHF, rankings, drops and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.lib.errors import DataError
from pipeline.lib.prompts import prompt_id
from reward.data import (
    load_preferences,
    load_rankings,
    parse_hh_transcript,
    ranking_pairs,
    tokenize_pairs,
    tokenize_rankings,
)

USER = [{"role": "user", "content": "Is the mug dishwasher safe?"}]
GOOD = [{"role": "assistant", "content": "Yes, but hand-wash it to keep the glaze bright."}]
BAD = [{"role": "assistant", "content": "No idea."}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_explicit_conversational_keeps_group_and_rank_gap(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": USER, "chosen": GOOD, "rejected": BAD, "group_id": "p1", "rank_gap": 2, "labeler": "ann"},
            {"prompt": USER, "chosen": BAD, "rejected": GOOD},
        ],
    )
    pairs, stats = load_preferences(path)
    assert stats.fmt == "explicit" and stats.rows_in == 2 and stats.rows_out == 2
    assert pairs[0] == {"prompt": USER, "chosen": GOOD, "rejected": BAD, "group_id": "p1", "rank_gap": 2}
    # No group_id: the hash of the prompt, so both rows of one prompt share it.
    assert pairs[1]["group_id"] == prompt_id(USER) and pairs[1]["rank_gap"] is None


def test_explicit_text_becomes_conversational(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}])
    (pair,), _ = load_preferences(path)
    assert pair["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Go away."}]


def test_implicit_prompt_is_the_shared_beginning(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"chosen": USER + GOOD, "rejected": USER + BAD},
            {"chosen": "Question: is it safe? Answer: yes, by hand", "rejected": "Question: is it safe? Answer: no"},
        ],
    )
    (conversational, text), stats = load_preferences(path)
    assert stats.fmt == "implicit"
    assert conversational["prompt"] == USER and conversational["chosen"] == GOOD and conversational["rejected"] == BAD
    # Text: cut back to a word boundary, never mid-word.
    assert text["prompt"] == [{"role": "user", "content": "Question: is it safe? Answer:"}]
    assert text["chosen"][0]["content"] == "yes, by hand" and text["rejected"][0]["content"] == "no"


def test_hh_rlhf_transcripts_split_into_prompt_and_final_replies(tmp_path):
    chosen = "\n\nHuman: My mug cracked.\n\nAssistant: Oh no!\n\nHuman: What now?\n\nAssistant: We'll send a new one."
    rejected = "\n\nHuman: My mug cracked.\n\nAssistant: Oh no!\n\nHuman: What now?\n\nAssistant: Glue it."
    other = "\n\nHuman: Something else\n\nAssistant: Glue it."
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": chosen, "rejected": rejected},
            {"chosen": chosen, "rejected": chosen},  # identical: dropped
            {
                "chosen": chosen,
                "rejected": "\n\nHuman: My mug cracked.\n\nAssistant: Oh no!\n\nHuman: What now?\n\nAssistant:",
            },
            {"chosen": chosen, "rejected": other},  # the conversations differ before the last reply: dropped
        ],
    )
    pairs, stats = load_preferences(path)
    assert stats.fmt == "hh-rlhf"
    assert pairs == [
        {
            "prompt": [
                {"role": "user", "content": "My mug cracked."},
                {"role": "assistant", "content": "Oh no!"},
                {"role": "user", "content": "What now?"},
            ],
            "chosen": [{"role": "assistant", "content": "We'll send a new one."}],
            "rejected": [{"role": "assistant", "content": "Glue it."}],
            "group_id": pairs[0]["group_id"],
            "rank_gap": None,
        }
    ]
    assert stats.as_dict()["dropped"] == {"empty_response": 1, "identical": 1, "prompt_mismatch": 1}
    assert stats.rows_out == 1


def test_parse_hh_transcript_keeps_paragraphs_inside_a_turn():
    turns = parse_hh_transcript("\n\nHuman: one\n\ntwo\n\nAssistant: three")
    assert turns == [{"role": "user", "content": "one\n\ntwo"}, {"role": "assistant", "content": "three"}]
    assert parse_hh_transcript("just text") == []


def test_csv_and_parquet_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.csv").write_text('prompt,chosen,rejected,rank_gap\n"Hi, there?",Hello!,Go away.,1\n')
    (pair,), _ = load_preferences(tmp_path / "p.csv")
    assert pair["prompt"][0]["content"] == "Hi, there?" and pair["rank_gap"] == 1

    pq.write_table(pa.Table.from_pylist([{"prompt": USER, "chosen": GOOD, "rejected": BAD}]), tmp_path / "p.parquet")
    (pair,), _ = load_preferences(tmp_path / "p.parquet")
    assert pair["chosen"] == GOOD


def test_useless_rows_are_dropped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": USER, "chosen": GOOD, "rejected": BAD},
            {"prompt": USER, "chosen": GOOD, "rejected": GOOD},
            {"prompt": USER, "chosen": GOOD, "rejected": [{"role": "assistant", "content": "  "}]},
            {"prompt": USER, "chosen": "", "rejected": "No."},
        ],
    )
    pairs, stats = load_preferences(path)
    assert len(pairs) == 1
    assert stats.as_dict()["dropped"] == {"empty_response": 2, "identical": 1}


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"prompt": "a", "completion": "b"}], r"columns found \('prompt', 'completion'\) fit none"),
        ([{"prompt": "a", "responses": ["b", "c"], "ranks": [1, 2]}], "--loss kway"),
        (
            [{"prompt": USER, "chosen": GOOD, "rejected": BAD}, {"prompt": USER, "chosen": GOOD}],
            r"p\.jsonl row 2: 'rejected' should be a string or a list of messages, got null",
        ),
        (
            [{"prompt": USER, "chosen": USER, "rejected": BAD}],
            r"row 1: 'chosen' message 1 has role 'user'. The response holds only the assistant's reply",
        ),
        (
            [{"prompt": [{"from": "human", "value": "hi"}], "chosen": "a", "rejected": "b"}],
            r"row 1: 'prompt' message 1 has no 'role' \(it looks like ShareGPT data\)",
        ),
        ([{"prompt": "q", "chosen": "a", "rejected": "b", "rank_gap": "wide"}], r"'rank_gap' should be a positive"),
        (
            [
                {
                    "chosen": [{"role": "user", "content": "x"}, *GOOD],
                    "rejected": [{"role": "user", "content": "y"}, *BAD],
                }
            ],
            "start with different messages, so there is no implicit prompt",
        ),
        (
            [{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b\n\nHuman: ?"}],
            r"'rejected' ends with a Human turn",
        ),
    ],
)
def test_malformed_files_name_file_row_and_problem(tmp_path, rows, match):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=match) as err:
        load_preferences(path)
    assert str(path) in str(err.value)


def test_many_bad_rows_are_listed_together(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": 3}] * 12)
    with pytest.raises(DataError, match="12 rows have problems") as err:
        load_preferences(path)
    assert "... and 2 more rows with problems." in str(err.value)


def test_rankings_are_read_checked_and_expanded_like_the_export(tmp_path):
    path = write_jsonl(
        tmp_path / "rankings.jsonl",
        [
            {"group_id": "g1", "prompt": USER, "responses": ["a", "b", "c"], "ranks": [2, 1, 2], "labeler": "x"},
            {"group_id": "g2", "prompt": USER, "responses": ["a", "b"], "ranks": [1, 1]},  # all tied: dropped
            {"group_id": "g3", "prompt": USER, "responses": ["a", "a"], "ranks": [1, 2]},  # duplicate texts: dropped
        ],
    )
    rankings, stats = load_rankings(path)
    assert [r["group_id"] for r in rankings] == ["g1"]
    assert stats.as_dict()["dropped"] == {"all_tied": 1, "identical": 1}
    pairs = ranking_pairs(rankings[0])
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["rank_gap"]) for p in pairs] == [
        ("b", "a", 1),
        ("b", "c", 1),
    ]

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": USER, "responses": ["a", "b"], "ranks": [1]}])
    with pytest.raises(DataError, match=r"bad\.jsonl row 1: 'ranks' should be a list of 2 integers"):
        load_rankings(bad)


def test_tokenized_with_the_policy_chat_template_and_too_long_dropped(micro_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    long_reply = [{"role": "assistant", "content": "word " * 400}]
    pairs = [
        {"prompt": USER, "chosen": GOOD, "rejected": BAD, "group_id": "a", "rank_gap": 1},
        {"prompt": USER, "chosen": GOOD, "rejected": long_reply, "group_id": "b", "rank_gap": 1},
    ]
    kept, too_long = tokenize_pairs(pairs, tokenizer, max_length=128)
    assert too_long == 1 and len(kept) == 1
    expected = tokenizer.apply_chat_template(USER + GOOD, tokenize=True, return_dict=True)["input_ids"]
    assert kept[0]["chosen_ids"] == list(expected)
    # The sequence ends with the EOS token, where PPO's reward model reads the score of a finished response.
    assert kept[0]["chosen_ids"][-1] == tokenizer.eos_token_id
    assert tokenize_pairs(pairs, tokenizer, max_length=None)[1] == 0

    ranking = {"prompt": USER, "responses": ["a", "b"], "ranks": [1, 2], "group_id": "g"}
    (tokenized,), dropped = tokenize_rankings([ranking], tokenizer, max_length=128)
    assert dropped == 0 and len(tokenized["response_ids"]) == 2
