"""The models PPO trains and reads: the policy and its critic in one module, and their forward passes.

The policy and the value model are wrapped in one ``nn.Module`` so that accelerate prepares a single model (one
DeepSpeed engine under ZeRO). The forwards compute only what PPO reads: the policy's LM head runs on the response
positions alone (``logits_to_keep``), not on the prompt, and the critic's scalar head likewise.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


class PolicyAndValue(nn.Module):
    def __init__(self, policy: PreTrainedModel | PeftModel, value_model: PreTrainedModel):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.config = policy.config  # accelerate sizes DeepSpeed's buckets from config.hidden_size

    # TRL's unwrap_model_for_generation turns gradient checkpointing off while the policy generates.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_gradient_checkpointing

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.policy.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()

    def forward(
        self, query_responses: torch.Tensor, context_length: int, pad_token_id: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the response tokens (divided by the temperature) and the values before each of them."""
        logits = response_logits(self.policy, query_responses, context_length, pad_token_id, temperature)
        values = response_values(self.value_model, query_responses, context_length, pad_token_id)
        return logits, values


def model_inputs(query_responses: torch.Tensor, pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention mask and positions for a left-padded prompt followed by a right-padded response."""
    attention = query_responses != pad_token_id
    return {
        "input_ids": query_responses.masked_fill(~attention, 0),
        "attention_mask": attention.long(),
        "position_ids": attention.cumsum(1) - attention.long(),
    }


def _keeps_logits(model: nn.Module) -> bool:
    base = getattr(model, "module", model)  # a DeepSpeed engine passes its keyword arguments on to its module
    get_base_model = getattr(base, "get_base_model", None)  # a PeftModel's forward passes them on to its base
    base = get_base_model() if get_base_model is not None else base
    return _takes_logits_to_keep(type(base).forward)


@functools.cache
def _takes_logits_to_keep(forward: Callable[..., Any]) -> bool:
    # Read once per model class's forward: the forwards call this for every chunk and micro-batch.
    return "logits_to_keep" in inspect.signature(forward).parameters


def response_logits(
    model: nn.Module, query_responses: torch.Tensor, context_length: int, pad_token_id: int, temperature: float
) -> torch.Tensor:
    """``[B, R, V]``: the logits that predict each of the R response tokens, divided by the temperature.

    The token at position t is predicted at t - 1, so the R + 1 last positions are kept and the very last dropped.
    Skipping the LM head on the prompt saves a third of its cost on the demo's prompts (about 70 tokens) and replies.
    """
    width = query_responses.shape[1] - context_length
    inputs = model_inputs(query_responses, pad_token_id)
    if _keeps_logits(model):
        logits = model(**inputs, logits_to_keep=width + 1, use_cache=False).logits[:, :-1]
    else:
        logits = model(**inputs, use_cache=False).logits[:, context_length - 1 : -1]
    return logits / temperature


def response_values(
    value_model: PreTrainedModel, query_responses: torch.Tensor, context_length: int, pad_token_id: int
) -> torch.Tensor:
    """``[B, R]``: the critic's value of the state before each response token."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(**model_inputs(query_responses, pad_token_id), use_cache=False).last_hidden_state
    head = value_model.get_submodule("score")  # the scalar head of AutoModelForSequenceClassification
    return head(hidden[:, context_length - 1 : -1]).squeeze(-1)


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio compares two forwards of the same weights: dropout would make it noise (N+ details, 2403.17031)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def add_value_adapters(value_model: nn.Module, lora) -> None:
    """LoRA adapters in the value model, in place; its scalar head stays trainable.

    TRL gives the adapter to the policy only and trains the value model in full: with LoRA, the value model's
    gradients and Adam moments (three times its weights) were then most of the memory LoRA was meant to save. The
    head is trained in full because it starts as the reward model's, which scores rewards rather than returns.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(lora, value_model)  # freezes every weight but the adapters'
    value_model.score.requires_grad_(True)


def count_parameters(model: nn.Module, trainable: bool = False) -> int:
    # Under ZeRO-3 a weight is partitioned as it loads: its full size is `ds_numel`.
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if not trainable or p.requires_grad)


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as transformers' Trainer makes them (no decay on biases and norms), empty groups dropped.

    With adapters in both models no trainable weight is exempt from decay, so that group is empty; DeepSpeed drops
    empty groups and a scheduler made for both then fails at its first step.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
