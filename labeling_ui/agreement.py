"""Inter-annotator agreement: small pure functions (numpy and krippendorff only).

A ranking is a list of ints aligned with an item's candidates, 1 = best, ties sharing a rank (the rank forms are in
``labeling_ui.rules``). ``pairwise_agreement`` and ``kendall_tau_b`` compare two rankings of the same candidates;
``krippendorff_alpha_ordinal`` takes a labelers x units matrix where a unit is one (item, candidate) and the value its
rank.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import krippendorff
import numpy as np


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pairwise_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of the C(K, 2) candidate pairs both rankings put in the same relation.

    A tie is a relation of its own: a pair agrees when both rankings prefer the same candidate or both tie it.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"Need two rankings of the same K >= 2 candidates, got lengths {len(a)} and {len(b)}.")
    pairs = list(itertools.combinations(range(len(a)), 2))
    same = sum(_sign(a[i] - a[j]) == _sign(b[i] - b[j]) for i, j in pairs)
    return same / len(pairs)


def kendall_tau_b(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Kendall's tau-b: (C - D) / sqrt((n0 - ties_a) * (n0 - ties_b)); None when a ranking ties everything.

    C and D count the concordant and discordant pairs; a pair tied in either ranking is neither.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"Need two rankings of the same K >= 2 candidates, got lengths {len(a)} and {len(b)}.")
    concordant = discordant = ties_a = ties_b = 0
    pairs = list(itertools.combinations(range(len(a)), 2))
    for i, j in pairs:
        product = _sign(a[i] - a[j]) * _sign(b[i] - b[j])
        concordant += product > 0
        discordant += product < 0
        ties_a += a[i] == a[j]
        ties_b += b[i] == b[j]
    denominator = math.sqrt((len(pairs) - ties_a) * (len(pairs) - ties_b))
    return (concordant - discordant) / denominator if denominator else None


def krippendorff_alpha_ordinal(matrix: np.ndarray | Sequence[Sequence[float]]) -> float | None:
    """Krippendorff's alpha, ordinal, of a labelers x units matrix (NaN = not rated).

    None when it is undefined: fewer than two distinct values, or no unit rated by two labelers.
    """
    data = np.asarray(matrix, dtype=float)
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    if data.ndim != 2 or not pairable.any() or len(np.unique(data[:, pairable][~np.isnan(data[:, pairable])])) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def agreement_summary(rankings: Mapping[str, Mapping[str, Sequence[int]]]) -> dict[str, float | int | None]:
    """Agreement over the items ranked by two labelers or more.

    ``rankings`` maps item -> labeler -> ranks (aligned with the item's candidates). ``pairwise_agreement`` and
    ``kendall_tau`` are averaged over the labeler pairs of each item, then over items; ``krippendorff_alpha`` pools
    every (item, candidate) unit into one labelers x units matrix.
    """
    shared = {item: by_labeler for item, by_labeler in rankings.items() if len(by_labeler) >= 2}
    labelers = sorted({name for by_labeler in shared.values() for name in by_labeler})
    row = {name: i for i, name in enumerate(labelers)}
    per_item_agreement, per_item_tau, columns = [], [], []
    n_pairs = 0
    for item in sorted(shared):
        by_labeler = shared[item]
        pairs = list(itertools.combinations(sorted(by_labeler), 2))
        n_pairs += len(pairs)
        per_item_agreement.append(_mean([pairwise_agreement(by_labeler[x], by_labeler[y]) for x, y in pairs]))
        per_item_tau.append(_mean([kendall_tau_b(by_labeler[x], by_labeler[y]) for x, y in pairs]))
        block = np.full((len(labelers), len(next(iter(by_labeler.values())))), np.nan)
        for name, ranks in by_labeler.items():
            block[row[name]] = ranks
        columns.append(block)
    alpha = krippendorff_alpha_ordinal(np.concatenate(columns, axis=1)) if columns else None
    return {
        "n_items": len(shared),
        "n_labeler_pairs": n_pairs,
        "pairwise_agreement": _mean(per_item_agreement),
        "kendall_tau": _mean(per_item_tau),
        "krippendorff_alpha": alpha,
    }
