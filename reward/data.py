"""Preference data for the reward model: pairs (or whole rankings) read into one form and tokenized for the policy.

Files are read by ``pipeline.lib.tables.read_table`` (``.jsonl``, ``.json``, ``.csv``, ``.parquet`` or a ``datasets``
folder). Accepted pair formats:

- TRL explicit prompt: ``{"prompt", "chosen", "rejected"}``, each a string or a list of ``{"role", "content"}``;
- TRL implicit prompt: ``{"chosen", "rejected"}``, whose shared beginning is the prompt (the shared messages of two
  conversations, or the shared words of two texts);
- Anthropic HH-RLHF: ``{"chosen", "rejected"}`` transcripts of ``"\\n\\nHuman: ..."`` / ``"\\n\\nAssistant: ..."``
  turns, of which all but the final assistant reply are the prompt.

Optional columns: ``group_id`` (or ``prompt_id``; default: a hash of the prompt), the prompt the pair belongs to, used
to hold out whole prompts; ``rank_gap``, how many ranks apart the two responses were. Every pair becomes
``{"prompt": [messages], "chosen": [assistant messages], "rejected": [...], "group_id", "rank_gap"}`` and is rendered
with the policy tokenizer's chat template, so the reward model scores the token ids the policy will produce.
The K-way loss reads whole rankings instead (``rankings.jsonl`` of the export: ``prompt``, ``responses``, ``ranks``).

A row that does not fit its format raises a ``DataError`` naming the file, the row and what to fix. Rows that fit but
teach nothing (identical responses, an empty response, a ranking that ties everything, too long once tokenized) are
dropped and counted by reason.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.lib.errors import DataError
from pipeline.lib.pairs import ranking_to_pairs
from pipeline.lib.prompts import prompt_id
from pipeline.lib.tables import ROLES, columns_note, format_problems, kind_of, messages_problem, read_table

ACCEPTED_FORMATS = (
    "'prompt' + 'chosen' + 'rejected' (TRL explicit prompt; strings or lists of messages), 'chosen' + 'rejected' "
    "(TRL implicit prompt, or Anthropic HH-RLHF transcripts)"
)
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class RowProblem(ValueError):
    """What is wrong with one row; collected and reported together as a DataError."""


@dataclass
class PreferenceStats:
    """What loading did: rows read, examples kept, and the rows dropped per reason."""

    source: str
    fmt: str
    rows_in: int
    dropped: Counter = field(default_factory=Counter)
    tied_pairs: int | None = None  # rankings only: tied pairs of the training rankings (kway drops them)

    @property
    def rows_out(self) -> int:
        return self.rows_in - sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.fmt,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(sorted(self.dropped.items())),
            **({} if self.tied_pairs is None else {"tied_pairs": self.tied_pairs}),
        }


# ---------------------------------------------------------------------------------------------------------------
# Pairs


def detect_preference_format(rows: list[dict], source: str) -> str:
    """'explicit', 'implicit' or 'hh-rlhf', judged from the columns that hold values (and, for text, the turns)."""
    columns = list(dict.fromkeys(key for row in rows for key, value in row.items() if value is not None))
    if "chosen" not in columns or "rejected" not in columns:
        found = ", ".join(map(repr, columns)) or "none"
        hint = " It looks like rankings: train on them with `--loss kway`." if "ranks" in columns else ""
        raise DataError(
            f"{source}: the columns found ({found}) fit none of the accepted preference formats. "
            f"Rename the columns to one of: {ACCEPTED_FORMATS}.{hint}"
        )
    if "prompt" in columns:
        return "explicit"
    texts = [row["chosen"] for row in rows if isinstance(row.get("chosen"), str)]
    if texts and sum(_is_hh(text) for text in texts) * 2 > len(texts):
        return "hh-rlhf"
    return "implicit"


def load_preferences(path: str | Path, split: str = "train") -> tuple[list[dict[str, Any]], PreferenceStats]:
    """Read, check and convert a preference file; drops useless rows (counted in the stats)."""
    source = str(path)
    rows = read_table(path, split)
    fmt = detect_preference_format(rows, source)
    convert = {"explicit": _explicit_pair, "implicit": _implicit_pair, "hh-rlhf": _hh_pair}[fmt]
    stats = PreferenceStats(source, fmt, len(rows))
    pairs, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            pair = convert(row)
            pair["group_id"] = _group_id(row, pair["prompt"])
            pair["rank_gap"] = _rank_gap(row)
        except RowProblem as problem:
            problems.append((number, str(problem)))
            continue
        reason = pair.pop("drop", None) or _useless_pair(pair)
        if reason:
            stats.dropped[reason] += 1
        else:
            pairs.append(pair)
    if problems:
        raise DataError(format_problems(problems, source))
    return pairs, stats


def _useless_pair(pair: dict[str, Any]) -> str | None:
    texts = [" ".join(m["content"] for m in pair[key]).strip() for key in ("chosen", "rejected")]
    if texts[0] == texts[1]:
        return "identical"
    if not all(texts):
        return "empty_response"
    return None


def _explicit_pair(row: dict) -> dict[str, Any]:
    return {"prompt": _prompt(row), "chosen": _response(row, "chosen"), "rejected": _response(row, "rejected")}


def _implicit_pair(row: dict) -> dict[str, Any]:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        # The shared text, cut back to a word boundary so a response never starts mid-word.
        n = len(_common_prefix(chosen, rejected))
        while n and not chosen[n - 1].isspace():
            n -= 1
        prompt = chosen[:n].strip()
        if not prompt:
            raise RowProblem(
                "'chosen' and 'rejected' share no beginning, so there is no implicit prompt. Add a 'prompt' column."
            )
        return {
            "prompt": _user(prompt),
            "chosen": _assistant(chosen[n:].strip()),
            "rejected": _assistant(rejected[n:].strip()),
        }
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
        shared = _common_prefix(chosen, rejected)
        if not shared:
            raise RowProblem(
                "'chosen' and 'rejected' start with different messages, so there is no implicit prompt. "
                "Add a 'prompt' column with the shared conversation."
            )
        pair = {"prompt": shared, "chosen": chosen[len(shared) :], "rejected": rejected[len(shared) :]}
        for key in ("chosen", "rejected"):
            for message in pair[key]:
                if message["role"] != "assistant":
                    raise RowProblem(
                        f"'{key}' goes on with a {message['role']!r} message after the shared prompt. Only the "
                        "final assistant reply may differ between 'chosen' and 'rejected'."
                    )
        return pair
    raise RowProblem(
        f"'chosen' and 'rejected' should both be strings or both lists of messages, got {kind_of(chosen)} and "
        f"{kind_of(rejected)}{columns_note(row) if chosen is None or rejected is None else ''}."
    )


def _hh_pair(row: dict) -> dict[str, Any]:
    turns = {}
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if not isinstance(value, str):
            raise RowProblem(f"{key!r} should be an HH-RLHF transcript (a string), got {kind_of(value)}.")
        turns[key] = parse_hh_transcript(value)
        if not turns[key]:
            raise RowProblem(
                f"{key!r} has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns, so it is not an HH-RLHF transcript."
            )
        if turns[key][-1]["role"] != "assistant":
            raise RowProblem(f"{key!r} ends with a Human turn. Each transcript must end with the Assistant's reply.")
    prompt = turns["chosen"][:-1]
    pair: dict[str, Any] = {"prompt": prompt, "chosen": turns["chosen"][-1:], "rejected": turns["rejected"][-1:]}
    if not prompt:
        raise RowProblem("'chosen' has no turn before the final Assistant reply, so there is no prompt.")
    if turns["rejected"][:-1] != prompt:
        pair["drop"] = "prompt_mismatch"  # the two transcripts differ before their final replies
    return pair


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> user/assistant messages; [] when the text has no such turns."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return []
    return [
        {"role": HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _is_hh(text: str) -> bool:
    return bool(re.match(r"\s*(\n\n)?Human:", text)) and "\n\nAssistant:" in text


# ---------------------------------------------------------------------------------------------------------------
# Rankings


def load_rankings(path: str | Path, keep_all_tied: bool = False) -> tuple[list[dict[str, Any]], PreferenceStats]:
    """Whole rankings ``{"prompt", "responses", "ranks", "group_id"}`` (1 = best, ties share a rank). A ranking that
    ties every reply is dropped (counted) unless ``keep_all_tied``."""
    source = str(path)
    rows = read_table(path)
    stats = PreferenceStats(source, "rankings", len(rows))
    rankings, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            prompt = _prompt(row)
            responses, ranks = _responses_and_ranks(row)
            ranking = {"prompt": prompt, "responses": responses, "ranks": ranks, "group_id": _group_id(row, prompt)}
        except RowProblem as problem:
            problems.append((number, str(problem)))
            continue
        texts = [response.strip() for response in responses]
        if not all(texts):
            stats.dropped["empty_response"] += 1
        elif len(set(texts)) < len(texts):
            stats.dropped["identical"] += 1
        elif len(set(ranks)) < 2 and not keep_all_tied:
            stats.dropped["all_tied"] += 1
        else:
            rankings.append(ranking)
    if problems:
        raise DataError(format_problems(problems, source))
    return rankings, stats


def _responses_and_ranks(row: dict) -> tuple[list[str], list[int]]:
    responses, ranks = row.get("responses"), row.get("ranks")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RowProblem(f"'responses' should be a list of strings, got {kind_of(responses)}{columns_note(row)}.")
    if len(responses) < 2:
        raise RowProblem(f"'responses' holds {len(responses)} response(s); a ranking needs at least 2.")
    if not isinstance(ranks, list) or len(ranks) != len(responses):
        raise RowProblem(f"'ranks' should be a list of {len(responses)} integers, one per response.")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
        raise RowProblem(f"'ranks' should hold integers from 1 (best), got {ranks}.")
    return responses, ranks


# ---------------------------------------------------------------------------------------------------------------
# Row helpers


def _prompt(row: dict) -> list[dict[str, str]]:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RowProblem("'prompt' is empty. Every row needs a prompt.")
        return _user(prompt)
    problem = messages_problem(row, "prompt")
    if problem:
        raise RowProblem(problem)
    return _plain_messages(row["prompt"])  # a list of messages: messages_problem checked it


def _response(row: dict, key: str) -> list[dict[str, str]]:
    """A response as assistant messages; an empty one is kept here and dropped (counted) by the caller."""
    value = row.get(key)
    if isinstance(value, str):
        return _assistant(value)
    messages = _messages(row, key)
    for index, message in enumerate(messages, start=1):
        if message["role"] != "assistant":
            raise RowProblem(
                f"{key!r} message {index} has role {message['role']!r}. The response holds only the assistant's "
                "reply; put earlier turns into 'prompt'."
            )
    return messages


def _messages(row: dict, key: str) -> list[dict[str, str]]:
    """A list of well-formed messages. Empty contents pass: an empty reply is a row to drop, not a broken file."""
    value = row.get(key)
    if not isinstance(value, list):
        raise RowProblem(f"{key!r} should be a string or a list of messages, got {kind_of(value)}{columns_note(row)}.")
    for index, message in enumerate(value, start=1):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise RowProblem(
                f"{key!r} message {index} should be an object with a 'role' ({', '.join(ROLES)}) and a string "
                "'content'."
            )
    return _plain_messages(value)


def _group_id(row: dict, prompt: list[dict[str, str]]) -> str:
    """The row's prompt id, else the prompt's hash: the pairs of one prompt must stay on one side of the eval split."""
    value = row.get("group_id", row.get("prompt_id"))
    return str(value) if value not in (None, "") else prompt_id(prompt)


def _rank_gap(row: dict) -> int | None:
    gap = row.get("rank_gap")
    if gap in (None, ""):
        return None
    try:
        number = float(gap)  # CSV cells are text
    except (TypeError, ValueError):
        number = 0.0
    if isinstance(gap, bool) or not number.is_integer() or number < 1:
        raise RowProblem(f"'rank_gap' should be a positive integer, got {gap!r}.")
    return int(number)


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _plain_messages(messages: list[dict]) -> list[dict[str, str]]:
    # Only role and content: Arrow gives every message every key any message has (None where absent).
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------------------------
# Tokenization


class Renderer:
    """Token ids of prompt + response in the policy's chat template, each distinct conversation rendered once."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def __call__(self, prompt: list[dict[str, str]], response: list[dict[str, str]]) -> list[int]:
        messages = prompt + response
        key = json.dumps(messages, ensure_ascii=False)
        if key not in self._cache:
            self._cache[key] = list(
                self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            )
        return self._cache[key]


def tokenize_pairs(pairs: list[dict[str, Any]], tokenizer, max_length: int | None) -> tuple[list[dict[str, Any]], int]:
    """The pairs with ``chosen_ids`` and ``rejected_ids`` added, and how many were dropped as too long."""
    render, kept = Renderer(tokenizer), []
    for pair in pairs:
        ids = {
            "chosen_ids": render(pair["prompt"], pair["chosen"]),
            "rejected_ids": render(pair["prompt"], pair["rejected"]),
        }
        if max_length is None or max(map(len, ids.values())) <= max_length:
            kept.append({**pair, **ids})
    return kept, len(pairs) - len(kept)


def tokenize_rankings(
    rankings: list[dict[str, Any]], tokenizer, max_length: int | None
) -> tuple[list[dict[str, Any]], int]:
    """The rankings with ``response_ids`` (one list per response) added, and how many were dropped as too long."""
    render, kept = Renderer(tokenizer), []
    for ranking in rankings:
        response_ids = [render(ranking["prompt"], _assistant(text)) for text in ranking["responses"]]
        if max_length is None or max(map(len, response_ids)) <= max_length:
            kept.append({**ranking, "response_ids": response_ids})
    return kept, len(rankings) - len(kept)


def ranking_pairs(ranking: dict[str, Any]) -> list[dict[str, Any]]:
    """A ranking's ordered pairs as pair rows (with their token ids when the ranking is tokenized); ties give none."""
    pairs = []
    for better, worse, gap in ranking_to_pairs(ranking["responses"], ranking["ranks"]):
        pair = {
            "prompt": ranking["prompt"],
            "chosen": _assistant(ranking["responses"][better]),
            "rejected": _assistant(ranking["responses"][worse]),
            "group_id": ranking["group_id"],
            "rank_gap": gap,
        }
        if "response_ids" in ranking:
            pair |= {"chosen_ids": ranking["response_ids"][better], "rejected_ids": ranking["response_ids"][worse]}
        pairs.append(pair)
    return pairs


def rankings_by_item(rankings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rankings of the same responses to the same prompt (one per labeler) as one item with a list of ``rankings``.

    The K-way loss forwards an item's responses once for all its rankings (InstructGPT: all comparisons of a prompt
    form one batch element), so a second labeler adds pairs to learn from but no forward passes.
    """
    items: dict[str, dict[str, Any]] = {}
    for ranking in rankings:
        key = json.dumps([ranking["prompt"], ranking["responses"]], ensure_ascii=False)
        item = items.setdefault(key, {k: v for k, v in ranking.items() if k != "ranks"} | {"rankings": []})
        item["rankings"].append(ranking["ranks"])
    return list(items.values())
