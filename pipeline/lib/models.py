"""Model helpers shared by the stages: the LoRA config, merging an adapter into a plain model, comparing tokenizers."""

from __future__ import annotations

from pathlib import Path


def lora_config(r: int, alpha: int, dropout: float, target_modules: str, task_type: str, **extra):
    """A peft.LoraConfig; ``target_modules`` is 'all-linear' or comma-separated module names."""
    from peft import LoraConfig

    targets = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type, **extra
    )


def merge_adapter(base_path: str | Path, adapter_dir: Path, out_dir: Path, tokenizer, model_class=None) -> None:
    """Load the base model, apply the adapter, merge it in and save a model plain transformers loads."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = (model_class or AutoModelForCausalLM).from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    save_here(merged, out_dir)
    tokenizer.save_pretrained(out_dir)


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
