"""Model helpers shared by the stages: comparing tokenizers, saving from any process."""

from __future__ import annotations

from pathlib import Path

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
