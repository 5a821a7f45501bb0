"""Best-of-n against PPO: sample n replies from the SFT policy and keep the reward model's favourite.

It needs no training, and its KL to the policy it samples from has a closed form, ``log n - (n - 1) / n`` (Stiennon
et al., 2020; an upper bound in general, exact when the n samples are distinct, Beirami et al., 2024). So the
question an engineer asks first, is PPO worth it on these labels, gets a fair answer: PPO's gold score against
best-of-n's at the same KL. ``make eval`` reports best-of-n for every n of ``best_of_n`` and draws gold score
against sqrt(KL) for best-of-n, the PPO policy, its snapshots over training (``snapshots`` in the PPO config) and
(after ``make dpo``) the DPO policy (``kl_frontier.png``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || policy) in nats: ``log n - (n - 1) / n``; 0 for n = 1."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}.")
    return math.log(n) - (n - 1) / n


def pick_best(scores: Sequence[Sequence[float]], n: int) -> list[int]:
    """Per prompt, the index of the highest-scored of its first ``n`` samples (the first one on a tie)."""
    return [max(range(n), key=lambda i: (row[i], -i)) for row in scores]


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of prompts where a beats b; a tie counts half."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)) / len(a)


def summarise(
    ns: Sequence[int], samples: list[list[dict[str, Any]]], sft_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """For each n: the mean reward-model score, gold score (when scored), length and KL of the picks, and their
    win rates against the SFT policy's own sample (by the reward model, and by the gold rubric)."""
    scores = [[s["score"] for s in per_prompt] for per_prompt in samples]
    out = []
    for n in ns:
        picks = [per_prompt[i] for per_prompt, i in zip(samples, pick_best(scores, n), strict=True)]
        row = {
            "n": n,
            "kl": best_of_n_kl(n),
            "reward_mean": sum(p["score"] for p in picks) / len(picks),
            "response_length": sum(p["length"] for p in picks) / len(picks),
            "win_rate_vs_sft": win_rate([p["score"] for p in picks], [r["score"] for r in sft_rows]),
        }
        if "gold" in picks[0]:
            row["gold_score"] = sum(p["gold"] for p in picks) / len(picks)
            row["gold_win_rate_vs_sft"] = win_rate([p["gold"] for p in picks], [r["gold"] for r in sft_rows])
        out.append(row)
    return out


def verdict(best_of_n: list[dict[str, Any]], policies: dict[str, dict[str, Any]], key: str) -> str:
    """One sentence: which scored highest, of the trained ``policies`` (name -> summary) and best-of-n for every n
    whose KL is within the largest of theirs, and the runners-up."""
    budget = max(p["kl_to_reference"] for p in policies.values())
    entries = [(name, p[key], p["kl_to_reference"]) for name, p in policies.items()]
    entries += [(f"best-of-{b['n']}", b[key], b["kl"]) for b in best_of_n if b["kl"] <= budget]
    entries.sort(key=lambda entry: -entry[1])
    what = "gold score" if key == "gold_score" else "reward-model score"
    (name, score, kl), rest = entries[0], entries[1:4]
    then = "; ".join(f"{n} {s:.3f} at KL {k:.2f}" for n, s, k in rest)
    return f"{name} won on this run: {what} {score:.3f} at KL {kl:.2f}" + (f" (then {then})." if then else ".")


def snapshots_sentence(snapshots: list[dict[str, Any]], key: str, prompts: int) -> str:
    """One sentence on PPO's course: each snapshot's score and KL to SFT, then the final policy's, on the same
    prompts."""
    what = "gold score" if key == "gold_score" else "reward-model score"
    points = ", ".join(
        f"step {p['step']}{' (final)' if p.get('final') else ''}: {p[key]:.3f} at KL {p['kl_to_reference']:.2f}"
        for p in snapshots
    )
    return f"PPO over training, {what} on the first {prompts} prompts: {points}."


def plot_frontier(
    path: Path,
    best_of_n: list[dict[str, Any]],
    policies: dict[str, dict[str, Any]],
    key: str,
    snapshots: list[dict[str, Any]] | None = None,
) -> Path:
    """``kl_frontier.png``: the plot of ``draw_frontier``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    draw_frontier(ax, best_of_n, policies, key, snapshots)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_frontier(
    ax,
    best_of_n: list[dict[str, Any]],
    policies: dict[str, dict[str, Any]],
    key: str,
    snapshots: list[dict[str, Any]] | None = None,
) -> None:
    """Gold (or reward-model) score against sqrt(KL) on the held-out prompts: best-of-n for each n, each trained
    policy (PPO, DPO), and PPO's snapshots as a line in PPO's colour, ending at the final policy measured on the
    snapshots' prompts. PPO's training rollouts are left out: other prompts, and replies cut at its
    response_length."""
    ax.plot([math.sqrt(b["kl"]) for b in best_of_n], [b[key] for b in best_of_n], "o-", label="best-of-n (SFT)")
    for b in best_of_n:
        ax.annotate(
            f"n={b['n']}", (math.sqrt(b["kl"]), b[key]), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    colours = {}
    for (name, summary), marker in zip(policies.items(), "*Ds^", strict=False):
        (line,) = ax.plot(
            [math.sqrt(max(summary["kl_to_reference"], 0.0))], [summary[key]], marker, ms=11, label=f"{name} policy"
        )
        colours[name] = line.get_color()
    if snapshots:
        xs = [math.sqrt(max(p["kl_to_reference"], 0.0)) for p in snapshots]
        ys = [p[key] for p in snapshots]
        ax.plot(xs, ys, ".--", color=colours.get("PPO"), lw=1, label="PPO over training (snapshots)")
        for p, x, y in zip(snapshots, xs, ys, strict=True):
            name = "final" if p.get("final") else f"step {p['step']}"
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("sqrt(KL to SFT)  [sqrt(nats)]")
    ax.set_ylabel("gold score" if key == "gold_score" else "reward-model score")
    ax.set_title("score against KL on held-out prompts")
    ax.legend(fontsize=8)
