"""Whether a reward model reads its policy's token ids as they are: the reward stage checks the tokenizer it saves.

The PPO stage accepts a reward model with another tokenizer (it re-tokenizes the decoded text for it); this check
is for the reward stage itself, whose model must keep the SFT tokenizer byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from pipeline.lib.models import tokenizer_differences


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
