"""Model helpers shared by the stages: the LoRA config, and merging an adapter into a plain model."""

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
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
