"""Prompts for PPO: tokenized once, served in a seeded order that a resumed run replays exactly."""

from __future__ import annotations

import torch


def tokenize_prompts(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], list[list[int]], int]:
    """The rows whose chat-templated prompt fits ``max_length`` tokens, their token ids, and how many were dropped."""
    kept_rows, kept_ids = [], []
    for row in rows:
        ids = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if len(ids) <= max_length:
            kept_rows.append(row)
            kept_ids.append(list(ids))
    return kept_rows, kept_ids, len(rows) - len(kept_rows)


class PromptOrder:
    """Which prompts each step trains on: the training prompts in a fresh seeded permutation per pass, read as one
    endless stream. Step u, process r of W, with L rollouts per process, takes the stream's positions
    ``u * W * L + r * L ...`` + L - 1; the position also seeds the sampling of that rollout. Nothing here depends on
    state that a checkpoint would have to carry: the step number is enough to continue."""

    def __init__(self, num_prompts: int, seed: int):
        if num_prompts < 1:
            raise ValueError("No training prompts left: add prompts, lower eval_prompts or raise max_prompt_length.")
        self.num_prompts, self.seed = num_prompts, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_prompts, generator=generator)}
        return self._perms[epoch]

    def positions(self, step: int, rank: int, world: int, per_process: int) -> list[int]:
        start = (step * world + rank) * per_process
        return list(range(start, start + per_process))

    def prompt_at(self, position: int) -> int:
        epoch, index = divmod(position, self.num_prompts)
        return int(self._perm(epoch)[index])


def left_pad(sequences: list[list[int]], pad_token_id: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([[pad_token_id] * (width - len(s)) + s for s in sequences], dtype=torch.long)


def sample_seeds(seed: int, positions: list[int]) -> torch.Tensor:
    """One sampling seed per rollout, from the run's seed and the rollout's stream position."""
    return torch.tensor([seed * (1 << 40) + p for p in positions], dtype=torch.int64)
