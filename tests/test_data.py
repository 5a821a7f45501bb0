"""Loading users' SFT data: every format from every file type, and errors that name the file, row and problem."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.lib.errors import DataError
from pipeline.lib.sft_data import detect_format, load_sft_dataset, scrub_pii, validate_sft_rows
from pipeline.lib.tables import read_table

USER = {"role": "user", "content": "What is 2 + 2?"}
ASSISTANT = {"role": "assistant", "content": "4."}
SYSTEM = {"role": "system", "content": "Answer briefly."}

# Each format with two rows and an extra column that must be kept out of the loaded dataset.
ROWS = {
    "text": [{"text": "The cat sat.", "id": 1}, {"text": "The dog ran.", "id": 2}],
    "prompt_completion": [
        {"prompt": "2 + 2 =", "completion": " 4", "id": 1},
        {"prompt": "3 + 3 =", "completion": " 6", "id": 2},
    ],
    "conversational_prompt_completion": [
        {"prompt": [SYSTEM, USER], "completion": [ASSISTANT], "id": 1},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]},
    ],
    "messages": [
        {"messages": [SYSTEM, USER, ASSISTANT], "id": 1},
        {
            "messages": [
                USER,
                ASSISTANT,
                {"role": "user", "content": "And 3 + 3?"},
                {"role": "assistant", "content": "6."},
            ]
        },
    ],
}
COLUMNS = {
    "text": ["text"],
    "prompt_completion": ["prompt", "completion"],
    "conversational_prompt_completion": ["prompt", "completion"],
    "messages": ["messages"],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_json_list(path: Path, rows: list[dict]) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(rows, indent=2))
    return path


def write_json_lines_as_json(path: Path, rows: list[dict]) -> Path:
    path = path.with_suffix(".json")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path = path.with_suffix(".csv")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_saved_dataset(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_saved_dataset_dict(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.disable_progress_bars()
    # The wanted rows sit in "train"; "test" holds something else, to show that the right split is read.
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows), test=datasets.Dataset.from_list(rows[:1])
    ).save_to_disk(str(path))
    return path


WRITERS = {
    "jsonl": write_jsonl,
    "json_list": write_json_list,
    "json_lines": write_json_lines_as_json,
    "csv": write_csv,
    "parquet": write_parquet,
    "saved": write_saved_dataset,
    "saved_dict": write_saved_dataset_dict,
}
# CSV cells hold only text, so the conversational formats are not read from CSV.
CASES = [
    (fmt, kind)
    for fmt in ROWS
    for kind in WRITERS
    if not (kind == "csv" and fmt in ("messages", "conversational_prompt_completion"))
]


def expect_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert match in message, message
    return message


# ---------------------------------------------------------------------------------------------------------------
# Every format from every file type


@pytest.mark.parametrize(("fmt", "kind"), CASES, ids=[f"{fmt}-{kind}" for fmt, kind in CASES])
def test_each_format_loads_from_each_file_type(tmp_path, fmt, kind):
    rows = ROWS[fmt]
    if kind == "csv":
        rows = [{key: str(value) for key, value in row.items()} for row in rows]
    path = WRITERS[kind](tmp_path / "train", rows)

    dataset, stats = load_sft_dataset(path)

    assert dataset.column_names == COLUMNS[fmt]
    assert dataset.to_list() == [{key: row[key] for key in COLUMNS[fmt]} for row in ROWS[fmt]]
    assert stats.as_dict() == {
        "source": str(path),
        "fmt": fmt,
        "rows_in": 2,
        "rows_out": 2,
        "duplicates_dropped": 0,
        "emails_scrubbed": 0,
        "phones_scrubbed": 0,
    }


def test_saved_dataset_dict_reads_the_named_split(tmp_path):
    path = write_saved_dataset_dict(tmp_path / "data", ROWS["text"])
    assert len(read_table(path, split="test")) == 1
    expect_error("has splits 'train', 'test', not 'validation'", read_table, path, split="validation")


def test_messages_keep_only_role_and_content(tmp_path):
    # Arrow gives every message every key any message has; a None "name" would reach the chat template.
    rows = [{"messages": [{**USER, "name": "ann"}, ASSISTANT]}, {"messages": [USER, ASSISTANT]}]
    dataset, _ = load_sft_dataset(write_parquet(tmp_path / "train", rows))
    assert dataset.to_list() == [{"messages": [USER, ASSISTANT]}] * 2


def test_empty_system_prompt_is_accepted():
    rows = [{"messages": [{"role": "system", "content": ""}, USER, ASSISTANT]}]
    validate_sft_rows(rows, "messages", "chats.jsonl")


def test_module_imports_neither_torch_nor_datasets():
    code = "import sys, pipeline.lib.tables, pipeline.lib.sft_data; print(sorted({'torch', 'datasets'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# Errors name the file, the row and the problem


def test_empty_completion_names_file_row_and_fix(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
    rows[16]["completion"] = ""
    path = write_jsonl(tmp_path / "train", rows)
    with pytest.raises(DataError) as info:
        load_sft_dataset(path)
    assert str(info.value) == f"{path} row 17: 'completion' is empty. Every row needs a non-empty completion."


def test_wrong_type_names_the_row_and_type(tmp_path):
    rows = [{"prompt": "q", "completion": "a"}, {"prompt": 42, "completion": "a"}, {"prompt": "q", "completion": "a"}]
    path = write_jsonl(tmp_path / "train", rows)
    message = expect_error("row 2: 'prompt' should be a string, got a number (42).", load_sft_dataset, path)
    assert message.startswith(str(path))


def test_missing_value_in_csv_is_reported(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('prompt,completion\n"Hello, who are you?",I am a model.\nSecond question,\n')
    expect_error(f"{path} row 2: 'completion' is empty.", load_sft_dataset, path)


def test_row_in_another_format_names_its_columns(tmp_path):
    rows = [{"messages": [USER, ASSISTANT]}, {"text": "a plain text row"}]
    path = write_jsonl(tmp_path / "mixed", rows)
    expect_error(f"{path} row 2: 'messages' is missing (the row has 'text').", load_sft_dataset, path)


def test_unknown_role_is_reported(tmp_path):
    rows = [{"messages": [USER, ASSISTANT]}] * 2 + [{"messages": [USER, {"role": "bot", "content": "hi"}]}]
    path = write_jsonl(tmp_path / "chats", rows)
    expect_error(
        f"{path} row 3: 'messages' message 2 has unknown role 'bot'. Use one of 'system', 'user', 'assistant'.",
        load_sft_dataset,
        path,
    )


def test_sharegpt_messages_get_a_rename_hint(tmp_path):
    rows = [{"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    path = write_jsonl(tmp_path / "chats", rows)
    expect_error("row 1: 'messages' message 1 has no 'role' (it looks like ShareGPT data)", load_sft_dataset, path)


def test_message_content_must_be_a_string(tmp_path):
    rows = [{"messages": [USER, {"role": "assistant", "content": ["4."]}]}]
    path = write_jsonl(tmp_path / "chats", rows)
    expect_error(
        "row 1: 'messages' message 2 ('assistant') content should be a string, got a list.", load_sft_dataset, path
    )


def test_no_assistant_turn_is_reported(tmp_path):
    rows = [{"messages": [USER, ASSISTANT]}, {"messages": [SYSTEM, USER]}]
    path = write_jsonl(tmp_path / "chats", rows)
    expect_error(f"{path} row 2: 'messages' has no assistant turn.", load_sft_dataset, path)


def test_conversation_must_end_with_the_assistant(tmp_path):
    rows = [{"messages": [USER, ASSISTANT, {"role": "user", "content": "Thanks"}]}]
    path = write_jsonl(tmp_path / "chats", rows)
    expect_error(f"{path} row 1: 'messages' ends with a 'user' message.", load_sft_dataset, path)


def test_conversational_completion_holds_only_assistant_messages(tmp_path):
    rows = [{"prompt": [SYSTEM], "completion": [USER, ASSISTANT]}]
    path = write_jsonl(tmp_path / "train", rows)
    expect_error(f"{path} row 1: 'completion' message 1 has role 'user'.", load_sft_dataset, path)


def test_conversational_data_in_csv_gets_a_hint(tmp_path):
    path = write_csv(tmp_path / "chats", [{"messages": json.dumps([USER, ASSISTANT])}])
    expect_error("row 1: 'messages' should be a list of messages, got a string.", load_sft_dataset, path)


def test_many_problems_are_reported_together(tmp_path):
    rows = [{"text": ""} if i % 2 else {"text": "fine"} for i in range(90)]
    path = write_jsonl(tmp_path / "train", rows)
    message = expect_error(f"{path}: 45 rows have problems.", load_sft_dataset, path)
    lines = message.splitlines()
    assert len(lines) == 1 + 10 + 1
    assert lines[1] == f"  {path} row 2: 'text' is empty. Every row needs a non-empty text."
    assert lines[10] == f"  {path} row 20: 'text' is empty. Every row needs a non-empty text."
    assert lines[-1] == "  ... and 35 more rows with problems."


def test_bad_json_line_names_its_line_number(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three"\n{"text": "four"}\n')
    expect_error(f"{path} line 3: not valid JSON", read_table, path)


def test_bad_json_list_names_its_line_number(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"text": "one"},\n  {"text": "two"}\n  {"text": "three"}\n]\n')
    expect_error(f"{path} line 4: not valid JSON", read_table, path)


def test_json_file_with_a_single_object_says_so(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": [{"text": "one"}]}, indent=2))
    expect_error(f"{path} holds one JSON object, not a list of rows.", read_table, path)


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "one"}\n["two"]\n')
    expect_error(f"{path} line 2: expected a JSON object, got a list.", read_table, path)


def test_ragged_csv_row_is_reported(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,completion\nq,a\nq,a,extra\n")
    expect_error(f"{path} row 2: has a different number of cells than the header (2).", read_table, path)


def test_unknown_columns_list_what_was_found_and_what_is_accepted(tmp_path):
    path = write_jsonl(tmp_path / "train", [{"question": "q", "answer": "a"}])
    message = expect_error(f"{path}: the columns found ('question', 'answer') fit none", load_sft_dataset, path)
    assert "'prompt' + 'completion'" in message and "'messages'" in message and "'text'" in message


def test_prompt_without_completion_is_not_an_sft_format():
    expect_error("the columns found ('prompt')", detect_format, [{"prompt": "q"}], "prompts.jsonl")


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("hello\n")
    expect_error(f"{path}: unsupported file type '.txt'. Use one of .jsonl, .json, .csv, .parquet", read_table, path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    expect_error(f"{path} does not exist.", load_sft_dataset, path)


@pytest.mark.parametrize(
    ("name", "content"), [("a.jsonl", ""), ("b.csv", ""), ("c.jsonl", "\n\n"), ("d.csv", "text\n")]
)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    message = expect_error(str(path), read_table, path)
    assert "is empty" in message or "holds no rows" in message


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    expect_error("not one written by datasets' save_to_disk", read_table, tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text\ncaf\u00e9\n".encode("latin-1"))
    expect_error(f"{path} is not UTF-8 text", read_table, path)


# ---------------------------------------------------------------------------------------------------------------
# De-duplication and PII scrubbing


def test_dedupe_drops_exact_duplicates_and_keeps_the_first(tmp_path):
    rows = [
        {"prompt": "Hi", "completion": "Hello", "id": 1},
        {"prompt": "Bye", "completion": "See you", "id": 2},
        {"prompt": " Hi", "completion": "Hello ", "id": 3},  # the same after whitespace normalisation
        {"prompt": "Hi", "completion": "Hello there", "id": 4},
        {"prompt": "Bye", "completion": "See you", "id": 5},
    ]
    path = write_jsonl(tmp_path / "train", rows)

    dataset, stats = load_sft_dataset(path, dedupe=True)

    assert dataset.to_list() == [
        {"prompt": "Hi", "completion": "Hello"},
        {"prompt": "Bye", "completion": "See you"},
        {"prompt": "Hi", "completion": "Hello there"},
    ]
    assert (stats.rows_in, stats.rows_out, stats.duplicates_dropped) == (5, 3, 2)
    assert load_sft_dataset(path)[1].rows_out == 5


def test_dedupe_compares_whole_conversations(tmp_path):
    other = {"role": "assistant", "content": "Four."}
    rows = [{"messages": [USER, ASSISTANT]}, {"messages": [USER, other]}, {"messages": [USER, ASSISTANT]}]
    _, stats = load_sft_dataset(write_jsonl(tmp_path / "chats", rows), dedupe=True)
    assert (stats.rows_out, stats.duplicates_dropped) == (2, 1)


@pytest.mark.parametrize(
    "phone",
    ["+1 (555) 123-4567", "555-123-4567", "+44 20 7946 0958", "(555) 123-4567", "1-800-555-1234", "020 7946 0958"],
)
def test_scrub_replaces_phone_numbers(phone):
    assert scrub_pii(f"Call me on {phone} today.") == ("Call me on [PHONE] today.", 0, 1)


@pytest.mark.parametrize(
    "text",
    [
        "Your order #48213 shipped.",
        "Due 2026-11-24 at 10:30.",
        "It costs $19.99.",
        "See order 4821.",
        "Room 12, floor 3.",
        "Ticket 5551234567.",
        "Total $1,234,567.89",
        "ISBN 978-0-13-468599-1",
        "Scored +5 points.",
    ],
)
def test_scrub_leaves_numbers_that_are_not_phones(text):
    assert scrub_pii(text) == (text, 0, 0)


def test_scrub_replaces_and_counts_emails():
    text = "Write to ann.lee+rlhf@example.co.uk or bob@mail.example.org, not to @handle."
    assert scrub_pii(text) == ("Write to [EMAIL] or [EMAIL], not to @handle.", 2, 0)


def test_load_scrubs_every_text_field(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Support desk, support@shop.example, +44 20 7946 0958."},
                {"role": "user", "content": "I am ann@example.com, call 555-123-4567 about order #48213."},
                {"role": "assistant", "content": "Done, ann@example.com."},
            ]
        },
    ]
    dataset, stats = load_sft_dataset(write_jsonl(tmp_path / "chats", rows), scrub=True)
    contents = [message["content"] for message in dataset[0]["messages"]]
    assert contents == [
        "Support desk, [EMAIL], [PHONE].",
        "I am [EMAIL], call [PHONE] about order #48213.",
        "Done, [EMAIL].",
    ]
    assert (stats.emails_scrubbed, stats.phones_scrubbed) == (3, 2)


def test_scrub_runs_before_dedupe_so_rows_differing_only_in_pii_collapse(tmp_path):
    rows = [
        {"prompt": "Email ann@a.example", "completion": "ok"},
        {"prompt": "Email bob@b.example", "completion": "ok"},
    ]
    path = write_jsonl(tmp_path / "train", rows)
    dataset, stats = load_sft_dataset(path, scrub=True, dedupe=True)
    assert dataset.to_list() == [{"prompt": "Email [EMAIL]", "completion": "ok"}]
    assert (stats.emails_scrubbed, stats.duplicates_dropped) == (2, 1)
