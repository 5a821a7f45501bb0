"""The reward model reads the policy's token ids as they are (TRL never re-tokenizes), so their tokenizers must match.

A mismatch would not crash: the reward model would score different words than the policy wrote, and PPO would
optimise noise. So it is checked before any model is loaded, and refused with a message saying what to do.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


def tokenizer_differences(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, limit: int = 3) -> list[str]:
    """What differs between two tokenizers in ways that change token ids; empty when they are interchangeable."""
    differences = []
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if len(vocab_a) != len(vocab_b):
        differences.append(f"vocabulary size {len(vocab_a)} vs {len(vocab_b)}")
    changed = sorted(token for token in vocab_a.keys() | vocab_b.keys() if vocab_a.get(token) != vocab_b.get(token))
    if changed:
        shown = ", ".join(f"{token!r} ({vocab_a.get(token)} vs {vocab_b.get(token)})" for token in changed[:limit])
        differences.append(f"{len(changed)} tokens with different ids, e.g. {shown}")
    for name in SPECIAL:
        if getattr(a, name) != getattr(b, name):
            differences.append(f"{name} {getattr(a, name)!r} vs {getattr(b, name)!r}")
    return differences


def check_tokenizers_match(policy_path: str | Path, reward_path: str | Path) -> None:
    """Raise ValueError naming the differences when the tokenizers saved at the two paths do not match."""
    policy, reward = AutoTokenizer.from_pretrained(policy_path), AutoTokenizer.from_pretrained(reward_path)
    differences = tokenizer_differences(policy, reward)
    if differences:
        raise ValueError(
            f"The tokenizer of {reward_path} does not match the policy's tokenizer at {policy_path}: "
            f"{'; '.join(differences)}. The reward model scores the policy's token ids as they are, so both must use "
            "the same tokenizer: train the reward model from the policy's SFT checkpoint (`make rm`, the default), "
            "or point the stage at a reward model trained with this policy's tokenizer."
        )
