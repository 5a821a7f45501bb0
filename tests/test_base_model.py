"""The embedded base model: deterministic from its seed, a chat template that fits TRL, pass-through of other ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.demo.base_model import PRESETS, build_base_model, resolve_model


def test_same_seed_builds_identical_files(tmp_path, demo_dir, micro_model):
    again = build_base_model("micro-llama", tmp_path / "again", seed=0)
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (Path(micro_model) / name).read_bytes(), name


def test_other_seed_gives_other_weights(tmp_path, demo_dir, micro_model):
    other = build_base_model("micro-llama", tmp_path / "other", seed=1)
    a = AutoModelForCausalLM.from_pretrained(micro_model).state_dict()
    b = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])


def test_model_matches_its_preset(micro_model):
    spec = PRESETS["micro-llama"]
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == spec.hidden_size and model.config.num_hidden_layers == spec.num_hidden_layers
    assert model.config.vocab_size == len(tokenizer) <= spec.vocab_size
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|end|>")


def test_chat_template_renders_prompt_as_prefix_of_the_conversation(micro_model):
    """TRL splits prompt and completion by rendering both; the prompt must be an exact prefix."""
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "From: Ana Diaz\nHello"}]
    completion = [{"role": "assistant", "content": "Hi Ana,\nThanks!"}]
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert head == "<|system|>\nBe brief.<|end|>\n<|user|>\nFrom: Ana Diaz\nHello<|end|>\n<|assistant|>\n"
    assert full == head + "Hi Ana,\nThanks!<|end|>"
    # Special tokens are single tokens, and ordinary text round-trips through the byte-level BPE.
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == full


def test_assistant_mask_covers_only_the_reply(micro_model):
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    messages = [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "Hi Sam,"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "Hi Sam,<|end|>"


def test_resolve_passes_hub_ids_and_paths_through(tmp_path):
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model("/models/mine", tmp_path) == "/models/mine"
    with pytest.raises(ValueError, match="embedded:tiny-llama"):
        resolve_model("embedded:huge", tmp_path)


def test_resolve_builds_once_and_caches(shared_runs, micro_model):
    path = Path(micro_model)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("embedded:micro-llama", shared_runs) == micro_model
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
