"""Loading users' own SFT data: read a file or a saved dataset, check every row, and hand TRL a clean dataset.

Accepted files: ``.jsonl``, ``.json`` (a list of objects, or JSON lines), ``.csv``, ``.parquet``, and a directory
written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``, of which one split is read). Accepted rows are
TRL's SFT formats:

- ``prompt_completion``: ``{"prompt": str, "completion": str}``
- ``conversational_prompt_completion``: ``{"prompt": [messages], "completion": [assistant messages]}``
- ``messages``: ``{"messages": [{"role": ..., "content": ...}, ...]}``
- ``text``: ``{"text": str}``

Problems are reported as a ``DataError`` that names the file, the 1-based row and what to fix, so a user with
a bad row 9,000 of a large file learns it before a training run starts rather than from a stack trace inside it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.lib.errors import DataError
from pipeline.lib.tables import format_problems, messages_problem, read_table, string_problem

if TYPE_CHECKING:
    import datasets

FORMAT_COLUMNS = {
    "prompt_completion": ("prompt", "completion"),
    "conversational_prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
}
ACCEPTED_FORMATS = (
    "'prompt' + 'completion' (strings, or lists of messages), "
    "'messages' (a list of {'role', 'content'} messages), or 'text' (a string)"
)


# ---------------------------------------------------------------------------------------------------------------
# Format detection and validation


def detect_format(rows: list[dict], source: str) -> str:
    """Which of TRL's SFT formats the rows are in, judged from the columns that hold values."""
    # Parquet and saved datasets give every row every column, with None where a row had none.
    columns = list(dict.fromkeys(key for row in rows for key, value in row.items() if value is not None))
    if "messages" in columns:
        return "messages"
    if "prompt" in columns and "completion" in columns:
        prompts = [row.get("prompt") for row in rows]
        as_lists = sum(isinstance(prompt, list) for prompt in prompts)
        as_strings = sum(isinstance(prompt, str) for prompt in prompts)
        # The majority decides, so a few odd rows are reported as such instead of every other row.
        return "conversational_prompt_completion" if as_lists > as_strings else "prompt_completion"
    if "text" in columns:
        return "text"
    found = ", ".join(map(repr, columns)) or "none"
    raise DataError(
        f"{source}: the columns found ({found}) fit none of the accepted SFT formats. "
        f"Rename the columns to one of: {ACCEPTED_FORMATS}."
    )


def validate_sft_rows(rows: list[dict], fmt: str, source: str) -> None:
    """Raise a DataError listing the rows (up to MAX_REPORTED) that do not fit ``fmt``; each row's first problem."""
    check = {
        "prompt_completion": _prompt_completion_problem,
        "conversational_prompt_completion": _conversational_prompt_completion_problem,
        "messages": _messages_row_problem,
        "text": _text_problem,
    }[fmt]
    problems = [(number, problem) for number, row in enumerate(rows, start=1) if (problem := check(row))]
    if problems:
        raise DataError(format_problems(problems, source))


def _text_problem(row: dict) -> str | None:
    return string_problem(row, "text")


def _prompt_completion_problem(row: dict) -> str | None:
    return string_problem(row, "prompt") or string_problem(row, "completion")


def _conversational_prompt_completion_problem(row: dict) -> str | None:
    problem = messages_problem(row, "prompt") or messages_problem(row, "completion")
    if problem:
        return problem
    for index, message in enumerate(row["completion"], start=1):
        if message["role"] != "assistant":
            return (
                f"'completion' message {index} has role {message['role']!r}. The completion holds only the "
                "assistant's reply; move earlier turns into 'prompt'."
            )
    return None


def _messages_row_problem(row: dict) -> str | None:
    problem = messages_problem(row, "messages")
    if problem:
        return problem
    roles = [message["role"] for message in row["messages"]]
    if "assistant" not in roles:
        return "'messages' has no assistant turn. Each conversation needs at least one assistant reply to learn from."
    if roles[-1] != "assistant":
        return (
            f"'messages' ends with a {roles[-1]!r} message. End each conversation with the assistant's reply "
            "(drop the trailing turns)."
        )
    return None


# ---------------------------------------------------------------------------------------------------------------
# PII scrubbing

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")

# Phone numbers need a shape, not just digits, so order numbers ("#48213"), dates, prices, times and bare digit
# runs stay: international numbers start with "+", national ones are North-American 3-3-4 groups or
# trunk-prefixed ("0...") numbers in separated groups. A bare "5551234567" is left alone: it may be an id.
PHONE = re.compile(
    r"""
    (?<![\w#$+/])(?<!\d[.,-])            # not inside a word, a longer number, an id, a price
    (?:
        \+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}         # +44 20 7946 0958, +1 (555) 123-4567
      | (?:1[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}  # (555) 123-4567, 555.123.4567, 1-555-123-4567
      | 0\d{2,4}[\s-]\d{3,4}[\s-]?\d{3,4}              # 020 7946 0958, 07700 900-123
    )
    (?![.,-]?\d)                         # and not followed by more of a number
    """,
    re.VERBOSE,
)
# E.164 numbers have at most 15 digits; fewer than 8 is more likely a reference number than a phone.
PHONE_DIGITS = range(8, 16)


def scrub_pii(text: str) -> tuple[str, int, int]:
    """Replace e-mail addresses with "[EMAIL]" and phone numbers with "[PHONE]"; returns (text, n_emails, n_phones)."""
    # E-mails first, so digits inside an address are never taken for a phone number.
    text, n_emails = EMAIL.subn("[EMAIL]", text)
    n_phones = 0

    def replace(match: re.Match) -> str:
        nonlocal n_phones
        if sum(char.isdigit() for char in match.group()) not in PHONE_DIGITS:
            return match.group()
        n_phones += 1
        return "[PHONE]"

    return PHONE.sub(replace, text), n_emails, n_phones


# ---------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class DataStats:
    """What loading did to one file. PII counts are over all rows read, before duplicates are dropped."""

    source: str
    fmt: str
    rows_in: int
    rows_out: int
    duplicates_dropped: int
    emails_scrubbed: int
    phones_scrubbed: int

    def as_dict(self) -> dict:
        return asdict(self)


def load_sft_dataset(
    path: str | Path, *, split: str = "train", dedupe: bool = False, scrub: bool = False
) -> tuple[datasets.Dataset, DataStats]:
    """Read, check and clean a user's SFT data; the dataset holds only the columns of its format."""
    import datasets

    source = str(path)
    rows = read_table(path, split)
    fmt = detect_format(rows, source)
    validate_sft_rows(rows, fmt, source)
    examples = [_format_columns(row, fmt) for row in rows]

    emails = phones = 0
    if scrub:
        examples, emails, phones = _scrub_examples(examples)
    # After scrubbing, so rows that differ only in an address or a number do not both stay in the training set.
    duplicates = 0
    if dedupe:
        examples, duplicates = _drop_duplicates(examples)

    stats = DataStats(source, fmt, len(rows), len(examples), duplicates, emails, phones)
    return datasets.Dataset.from_list(examples), stats


def _format_columns(row: dict, fmt: str) -> dict:
    example = {key: row[key] for key in FORMAT_COLUMNS[fmt]}
    if fmt in ("messages", "conversational_prompt_completion"):
        # Keep only role and content: Arrow gives every message every key any message has (None where absent),
        # and chat templates treat a None "name" or "tool_calls" as present.
        example = {
            key: [{"role": message["role"], "content": message["content"]} for message in value]
            for key, value in example.items()
        }
    return example


def _scrub_examples(examples: list[dict]) -> tuple[list[dict], int, int]:
    emails = phones = 0

    def scrub(text: str) -> str:
        nonlocal emails, phones
        text, n_emails, n_phones = scrub_pii(text)
        emails += n_emails
        phones += n_phones
        return text

    scrubbed = [
        {
            key: scrub(value)
            if isinstance(value, str)
            else [{**message, "content": scrub(message["content"])} for message in value]
            for key, value in example.items()
        }
        for example in examples
    ]
    return scrubbed, emails, phones


def _drop_duplicates(examples: list[dict]) -> tuple[list[dict], int]:
    """Keep the first of each group of examples whose normalised content is equal."""
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = json.dumps(_normalised(example), sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def _normalised(value: Any) -> Any:
    """Strings in NFC with runs of whitespace collapsed, so copies that differ only in spacing count as equal."""
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFC", value).split())
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    return value
