"""Model helpers shared by the stages: comparing tokenizers, saving from any process."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from pipeline.lib.errors import MissingInputError

SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


def tokenizer_differences(a, b, limit: int = 3) -> list[str]:
    """What differs between two tokenizers in ways that change token ids; empty when they are interchangeable."""
    differences = []
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if len(vocab_a) != len(vocab_b):
        differences.append(f"vocabulary size {len(vocab_a)} vs {len(vocab_b)}")
    changed = sorted(token for token in vocab_a.keys() | vocab_b.keys() if vocab_a.get(token) != vocab_b.get(token))
    if changed:
        shown = ", ".join(f"{token!r} ({vocab_a.get(token)} vs {vocab_b.get(token)})" for token in changed[:limit])
        differences.append(f"{len(changed)} tokens with different ids, e.g. {shown}")
    for name in SPECIAL_TOKENS:
        if getattr(a, name) != getattr(b, name):
            differences.append(f"{name} {getattr(a, name)!r} vs {getattr(b, name)!r}")
    if (a.chat_template or None) != (b.chat_template or None):
        differences.append("chat templates differ")
    return differences


def save_here(model, directory: str | Path, **kwargs) -> None:
    """``model.save_pretrained`` from this process, whatever its global rank.

    Once a process group exists, transformers 5 writes on global rank 0 only (``should_save_on_this_rank``); a stage
    whose every node writes its own copy (machines without a shared disk) calls this on each node's main process.
    """
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        model.save_pretrained(directory, **kwargs)
    finally:
        del model.should_save_on_this_rank


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2" or "org/name", as the hub spells repository ids


def check_model_source(setting: str, name: str) -> None:
    """Refuse a model name at once when it can load from nowhere: a path that does not exist, a name that is no hub
    id, or a hub id while the hub is unreachable and the model is not in the local cache (transformers would spend a
    minute retrying before saying so)."""
    if Path(name).expanduser().exists():
        return
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or not HUB_ID.match(name):
        raise MissingInputError(
            f"{setting}: {name} is not a local path that exists, nor a Hugging Face model id (org/name). Check the "
            f"path (relative paths are from {Path.cwd()})."
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: transformers loads it without the network
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not hub_reachable():
        raise MissingInputError(
            f"{setting}: {name} is not a local path, and it is not in the local Hugging Face cache while the hub is "
            "offline. Download it on a machine with network access (huggingface-cli download), or give a local path."
        )


def hub_reachable(timeout_s: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False
