"""Pairwise expansion against the K-way ranking loss: forward passes and time per ranking, at K=4 and K=8.

A ranking of K responses orders C(K, 2) pairs. Expanded into pairs (TRL's RewardTrainer layout: every pair is a chosen
and a rejected sequence), one ranking costs 2 * C(K, 2) forward passes; the K-way loss scores each response once
(K passes) and takes the same Bradley-Terry terms from those K scores. Both variants run one training step
(forward and backward, no optimiser step) of the embedded tiny Llama with a scalar head on the same rankings of
demo replies, through the stage's own code: TRL's preference collator with ``pairwise_loss``, and
``reward.trainer.RankingCollator`` with ``kway_ranking_loss``. Times are medians over ``repeats`` steps after a warm-up.

    python -m bench.bench_kway [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from math import comb
from pathlib import Path
from typing import Any

RANKINGS_PER_STEP = 4
KS = (4, 8)


def _rankings(tokenizer, demo_dir: Path, k: int, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rankings: a demo prompt, K demo replies (as token ids with the prompt) and a random order, no ties."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in (demo_dir / "sft_train.jsonl").read_text().splitlines()[: n * k]]
    rankings = []
    for i in range(n):
        prompt = rows[i * k]["prompt"]
        replies = [row["completion"] for row in rows[i * k : (i + 1) * k]]
        ids = [
            list(tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"])
            for reply in replies
        ]
        rankings.append({"response_ids": ids, "rankings": [rng.sample(range(1, k + 1), k)]})
    return rankings


def _pairwise_step(model, collator, rankings: list[dict[str, Any]]):
    """Each ranking expanded into its ordered pairs, every pair forwarded as chosen + rejected."""
    import torch

    from reward.losses import pairwise_loss

    pairs = []
    for ranking in rankings:
        ids, ranks = ranking["response_ids"], ranking["rankings"][0]
        for i, j in itertools.permutations(range(len(ids)), 2):
            if ranks[i] < ranks[j]:
                pairs.append({"chosen_ids": ids[i], "rejected_ids": ids[j]})
    batch = collator(pairs)
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    r_chosen, r_rejected = torch.chunk(rewards, 2)
    pairwise_loss(r_chosen, r_rejected).backward()
    return batch["input_ids"].shape[0]


def _kway_step(model, collator, rankings: list[dict[str, Any]]):
    """Each response forwarded once; the loss over all ordered pairs of each ranking."""
    from reward.losses import kway_ranking_loss

    batch = collator(rankings)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    mask, item = batch["response_mask"], batch["ranking_item"]
    rewards = logits.new_zeros(mask.shape).masked_scatter(mask, logits)
    kway_ranking_loss(rewards[item], batch["ranks"], mask[item]).backward()
    return batch["input_ids"].shape[0]


def _median_seconds(step, model, collator, rankings, repeats: int) -> tuple[float, int]:
    step(model, collator, rankings)  # warm-up: allocator, kernels, autograd graph
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        forwards = step(model, collator, rankings)
        times.append(time.perf_counter() - start)
    return statistics.median(times), forwards


def run(repeats: int = 5, model: str = "embedded:tiny-llama", runs_dir: str = "runs") -> dict[str, Any]:
    """Forward passes and seconds per ranking of both variants at K=4 and K=8, and their K-way / pairwise ratios."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import DataCollatorForPreference, suppress_seqcls_warning

    from pipeline.demo.base_model import resolve_model
    from pipeline.demo.data import ensure_demo_data
    from reward.trainer import RankingCollator

    demo_dir = ensure_demo_data(runs_dir)
    path = resolve_model(model, runs_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    with suppress_seqcls_warning():  # the fresh score head is expected
        net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    net.config.pad_token_id = tokenizer.pad_token_id
    net.train()
    pair_collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    ranking_collator = RankingCollator(tokenizer.pad_token_id)

    out: dict[str, Any] = {
        "model": model,
        "parameters": sum(p.numel() for p in net.parameters()),
        "rankings_per_step": RANKINGS_PER_STEP,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }
    for k in KS:
        rankings = _rankings(tokenizer, demo_dir, k, RANKINGS_PER_STEP)
        pairwise_s, pairwise_forwards = _median_seconds(_pairwise_step, net, pair_collator, rankings, repeats)
        kway_s, kway_forwards = _median_seconds(_kway_step, net, ranking_collator, rankings, repeats)
        lengths = [len(ids) for r in rankings for ids in r["response_ids"]]
        out[f"k{k}"] = {
            "pairs_per_ranking": comb(k, 2),
            "mean_tokens_per_sequence": round(sum(lengths) / len(lengths), 1),
            "pairwise_forward_passes_per_ranking": pairwise_forwards / RANKINGS_PER_STEP,
            "kway_forward_passes_per_ranking": kway_forwards / RANKINGS_PER_STEP,
            "forward_pass_ratio": kway_forwards / pairwise_forwards,
            "pairwise_s_per_ranking": pairwise_s / RANKINGS_PER_STEP,
            "kway_s_per_ranking": kway_s / RANKINGS_PER_STEP,
            "time_ratio": kway_s / pairwise_s,
        }
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"K-way ranking loss vs pairwise expansion: {result['model']} ({result['parameters'] / 1e6:.1f}M parameters), "
        f"{result['rankings_per_step']} rankings per step, forward + backward, median of {result['repeats']}, "
        f"{result['threads']} threads",
        "",
        "| K | pairs | forward passes / ranking (pairwise -> K-way) | ratio | s / ranking (pairwise -> K-way) | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in KS:
        r = result[f"k{k}"]
        lines.append(
            f"| {k} | {r['pairs_per_ranking']} | {r['pairwise_forward_passes_per_ranking']:.0f} -> "
            f"{r['kway_forward_passes_per_ranking']:.0f} | {r['forward_pass_ratio']:.2f}x | "
            f"{r['pairwise_s_per_ranking']:.3f} -> {r['kway_s_per_ranking']:.3f} | {r['time_ratio']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="embedded:tiny-llama", help="embedded preset, hub id or path")
    parser.add_argument("--runs_dir", default="runs", help="where the demo data and embedded models are cached")
    args = parser.parse_args()
    print(table(run(args.repeats, args.model, args.runs_dir)))
