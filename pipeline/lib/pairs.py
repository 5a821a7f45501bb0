"""Rankings to preference pairs: the one expansion the labeling export and the reward model's K-way data share."""

from __future__ import annotations

import itertools


def ranking_to_pairs(responses: list, ranks: list[int]) -> list[tuple[int, int, int]]:
    """(chosen_idx, rejected_idx, rank_gap) for every pair of responses the ranking orders (1 = best); ties give none."""
    if len(responses) != len(ranks):
        raise ValueError(f"{len(responses)} responses but {len(ranks)} ranks.")
    pairs = []
    for i, j in itertools.combinations(range(len(ranks)), 2):
        if ranks[i] != ranks[j]:
            better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
            pairs.append((better, worse, abs(ranks[i] - ranks[j])))
    return pairs
