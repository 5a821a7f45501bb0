"""Prompt files: rows with a ``prompt`` (text or chat messages), read the same way by every stage that samples."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.lib.errors import DataError
from pipeline.lib.tables import read_table


def load_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompt rows ``{"prompt_id", "prompt": [messages]}`` of a table with a ``prompt`` column.

    A text prompt becomes one user message; the id is the row's ``id`` or ``prompt_id``, else a hash of the prompt,
    so the same prompt keeps its id across files and runs.
    """
    rows = []
    for i, row in enumerate(read_table(path), start=1):
        prompt = prompt_messages(row.get("prompt"), f"{path} row {i}")
        rows.append({"prompt_id": str(row.get("id") or row.get("prompt_id") or prompt_id(prompt)), "prompt": prompt})
    return rows[:limit]


def prompt_messages(prompt: object, where: str) -> list[dict[str, str]]:
    """A row's prompt as chat messages ``{"role", "content"}``: a text is one user message, a message without a role
    is the user's; ``where`` (the file and row) starts the ``DataError`` for anything else."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "content" in m for m in prompt):
        raise DataError(f"{where}: 'prompt' must be a text or a non-empty list of messages with 'role' and 'content'.")
    return [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in prompt]


def prompt_id(prompt: list[dict[str, str]]) -> str:
    """The id of a prompt that has none: a hash of its messages, the same in every stage, file and run.

    Non-ASCII text is hashed as JSON escapes (``json.dumps``'s default), as the prompt ids already written were.
    """
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def user_message(messages: Sequence[Mapping[str, str]]) -> str:
    """The text a gold rubric scores and a reader is shown as the prompt: the last user message (the last message if
    none is a user's), so an earlier reply or a reply's opening words in the prompt are never taken for the request."""
    users = [m for m in messages if m.get("role") == "user"]
    return str((users or list(messages))[-1]["content"])


def reply_suffix(tokenizer) -> str:
    """What the chat template writes after a reply's EOS token: ChatML's newline after ``<|im_end|>``, often nothing.

    A rollout ends at its EOS token, while the reward model was trained on conversations as the template writes them
    and reads its score at their last token; PPO appends this to a finished rollout before scoring it.
    """
    eos = tokenizer.eos_token
    if not tokenizer.chat_template or not eos:
        return ""
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    end = text.rfind(eos)
    return text[end + len(eos) :] if end != -1 else ""
