"""Reading tables: users' files and the project's own JSON lines, with problems named by file and row.

Accepted files: ``.jsonl``, ``.json`` (a list of objects, or JSON lines), ``.csv``, ``.parquet``, and a directory
written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``, of which one split is read); text files may be
compressed (``.gz``, ``.bz2``, ``.xz``). The row checks shared by the stages that read messages live here too;
what makes a row good SFT data is ``pipeline.lib.sft_data``'s.

Problems are reported as a ``DataError`` that names the file, the 1-based row and what to fix, so a user with
a bad row 9,000 of a large file learns it before a training run starts rather than from a stack trace inside it.
The project's own JSON lines (candidates, samples, histories, exports) are written by ``write_jsonl``: UTF-8,
one object per line, replaced atomically so a reader never sees half a file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from pipeline.lib.errors import DataError

ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Compressed text tables, as public preference sets often ship (and `datasets` reads): x.jsonl.gz, x.csv.xz, ...
COMPRESSIONS: dict[str, Callable[..., IO[Any]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
MAX_REPORTED = 10


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
# The project's own JSON lines


def json_line(row: Any) -> str:
    """One row as a line of JSON lines, its keys in the order the writer built them and its text kept as UTF-8."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Write ``rows`` to ``path`` through a temporary file and a rename, so a crash leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(json_line(row) for row in rows)
    os.replace(tmp, path)


def read_jsonl(path: str | Path) -> list[Any]:
    """The rows of a JSON lines file the project wrote; blank lines are skipped, a missing file is empty."""
    path = Path(path)
    if not path.exists():
        return []
    return _read_json_lines(path, path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Row checks shared by the stages that read messages


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


def string_problem(row: dict, key: str) -> str | None:
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
