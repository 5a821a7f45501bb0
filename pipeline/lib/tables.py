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

import bz2
import csv
import gzip
import io
import json
import lzma
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.lib.errors import DataError

if TYPE_CHECKING:
    import datasets

FORMAT_COLUMNS = {
    "prompt_completion": ("prompt", "completion"),
    "conversational_prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Compressed text tables, as public preference sets often ship (and `datasets` reads): x.jsonl.gz, x.csv.xz, ...
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
MAX_REPORTED = 10

ACCEPTED_FORMATS = (
    "'prompt' + 'completion' (strings, or lists of messages), "
    "'messages' (a list of {'role', 'content'} messages), or 'text' (a string)"
)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_table(path: str | Path, split: str = "train") -> list[dict]:
    """Every row of a supported file or saved dataset directory, as plain dicts.

    Rows are numbered from 1 in file order in every message (for CSV the header is not a row; blank lines of a
    JSON lines file are skipped). ``split`` picks the split of a saved ``DatasetDict``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist. Check the path (relative paths are from {Path.cwd()}).")
    if path.is_dir():
        rows = _read_saved_dataset(path, split)
    else:
        suffix = table_suffix(path)
        if suffix not in SUFFIXES or (suffix == ".parquet" and path.suffix.lower() in COMPRESSIONS):
            raise DataError(
                f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'!r}. Use one of "
                f"{', '.join(SUFFIXES)} (jsonl, json and csv also compressed: {', '.join(COMPRESSIONS)}), or a "
                "directory saved with datasets' save_to_disk."
            )
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty. Point the config at a file that holds the training examples.")
        readers = {".jsonl": _read_json_lines, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
        rows = readers[suffix](path)
    if not rows:
        raise DataError(f"{path} holds no rows. Point the config at a file that holds the training examples.")
    return rows


def table_suffix(path: Path) -> str:
    """The table's own suffix, under a compression suffix if there is one: data.jsonl.gz -> .jsonl."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        return suffixes[-2] if len(suffixes) > 1 else ""
    return suffixes[-1] if suffixes else ""


def _read_text(path: Path) -> str:
    opener = COMPRESSIONS.get(path.suffix.lower())
    try:
        # utf-8-sig: spreadsheet programs often start their exports with a byte-order mark.
        if opener is None:
            return path.read_text(encoding="utf-8-sig")
        with opener(path, "rt", encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}). Save it as UTF-8.") from err
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(f"{path} could not be decompressed ({err}). Check the file is complete.") from err


def json_problem(err: json.JSONDecodeError) -> str:
    # json's own messages may end in "at" ("Unterminated string starting at"): one "at column N" then.
    return f"{err.msg.removesuffix(' at')} at column {err.colno}"


def _read_json_lines(path: Path, text: str | None = None) -> list[dict]:
    text = _read_text(path) if text is None else text
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {line_number}: not valid JSON ({json_problem(err)}). "
                "Each line must hold one complete JSON object."
            ) from err
        if not isinstance(row, dict):
            raise DataError(
                f"{path} line {line_number}: expected a JSON object, got {kind_of(row)}. "
                'Each line must hold one object such as {"prompt": ..., "completion": ...}.'
            )
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        try:
            return _read_json_lines(path, text)
        except DataError:
            # A pretty-printed single object fails as JSON lines on its first line; say what it really is.
            if isinstance(_loads_or_none(text), dict):
                raise DataError(
                    f"{path} holds one JSON object, not a list of rows. Put the rows in a top-level list "
                    "([{...}, {...}]) or write one object per line (JSON lines)."
                ) from None
            raise
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: not valid JSON ({json_problem(err)}).") from err
    for row_number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {row_number}: expected a JSON object, got {kind_of(row)}.")
    return data


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({err}).") from err
    if not reader.fieldnames:
        raise DataError(f"{path} has no header row. The first line must name the columns, e.g. prompt,completion.")
    for row_number, row in enumerate(rows, start=1):
        # DictReader files extra cells under None and fills missing ones with None: both mean a broken row.
        if None in row or None in row.values():
            raise DataError(
                f"{path} row {row_number}: has a different number of cells than the header "
                f"({len(reader.fieldnames)}). Quote cells that contain commas or line breaks."
            )
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path} could not be read as Parquet ({err}).") from err


def _read_saved_dataset(path: Path, split: str) -> list[dict]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(
            f"{path} is a directory but not one written by datasets' save_to_disk (no state.json or "
            "dataset_dict.json). Point the config at a data file or a saved dataset."
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path} has splits {', '.join(map(repr, loaded))}, not {split!r}. Pick one of them.")
        loaded = loaded[split]
    return loaded.to_list()


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


def format_problems(problems: list[tuple[int, str]], source: str) -> str:
    """One line for a single problem; otherwise a header and the first MAX_REPORTED rows."""
    if len(problems) == 1:
        number, problem = problems[0]
        return f"{source} row {number}: {problem}"
    lines = [f"{source}: {len(problems)} rows have problems."]
    lines += [f"  {source} row {number}: {problem}" for number, problem in problems[:MAX_REPORTED]]
    if len(problems) > MAX_REPORTED:
        lines.append(f"  ... and {len(problems) - MAX_REPORTED} more rows with problems.")
    return "\n".join(lines)


def _text_problem(row: dict) -> str | None:
    return _string_problem(row, "text")


def _prompt_completion_problem(row: dict) -> str | None:
    return _string_problem(row, "prompt") or _string_problem(row, "completion")


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


def _string_problem(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return f"{key!r} is missing{columns_note(row)}. Every row needs a non-empty {key}."
    if not isinstance(value, str):
        return f"{key!r} should be a string, got {kind_of(value)}. Every row needs a non-empty {key}."
    if not value.strip():
        return f"{key!r} is empty. Every row needs a non-empty {key}."
    return None


def messages_problem(row: dict, key: str) -> str | None:
    messages = row.get(key)
    if messages is None:
        return f"{key!r} is missing{columns_note(row)}. Every row needs a non-empty list of messages."
    if isinstance(messages, str):
        return (
            f"{key!r} should be a list of messages, got a string. If it holds JSON text (a CSV cell can hold only "
            "text), store the data as JSONL, JSON or Parquet instead."
        )
    if not isinstance(messages, list):
        return f"{key!r} should be a list of messages, got {kind_of(messages)}."
    if not messages:
        return f"{key!r} has no messages. Every row needs at least one."
    for index, message in enumerate(messages, start=1):
        problem = _message_problem(message)
        if problem:
            return f"{key!r} message {index} {problem}"
    return None


def columns_note(row: dict) -> str:
    """The columns a row does have, which shows a row written in another format than the rest of the file."""
    columns = [key for key, value in row.items() if value is not None]
    return f" (the row has {', '.join(map(repr, columns))})" if columns else " (the row is empty)"


def _message_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return f"should be an object with 'role' and 'content', got {kind_of(message)}."
    role = message.get("role")
    if role is None:
        if "from" in message:
            return (
                "has no 'role' (it looks like ShareGPT data): rename 'from' to 'role' and 'value' to 'content', "
                "with roles 'user' and 'assistant' for 'human' and 'gpt'."
            )
        return "has no 'role'. Every message needs a 'role' and a 'content'."
    if role not in ROLES:
        return f"has unknown role {role!r}. Use one of {', '.join(map(repr, ROLES))}."
    content = message.get("content")
    if not isinstance(content, str):
        return f"({role!r}) content should be a string, got {kind_of(content)}."
    # An empty system prompt is common in exported chats and harmless; an empty user or assistant turn is a bug.
    if role != "system" and not content.strip():
        return f"({role!r}) has empty content. Remove the message or fill it in."
    return None


def kind_of(value: Any) -> str:
    """How a JSON-ish value reads in a message: 'a number (42)' rather than "<class 'int'>"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


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
