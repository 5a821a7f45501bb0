"""Reward-model quality on simulated labels: the K-way loss that drops ties against the one that models them
(``kway`` vs ``kway_ties``), and an ensemble against its members (case ``rm_labels``).

The labels: the demo prompts, each with 4 replies in distinct demo styles, ranked by two simulated labelers as
``python -m labeling_ui simulate`` ranks (the gold rubric plus each labeler's noise, ties within the tie tolerance of
configs/labeling.yaml). The policy: the PPO case's SFT model (built once). Every run is ``reward.train`` with
configs/rm.yaml for one epoch; the figures are its held-out ones (the same held-out prompts for every run): accuracy
against the labels, agreement with the gold rubric, expected calibration error, and for the ensemble its members'
and the disagreement on the pairs it orders right and wrong.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from bench.core import CaseResult, Workspace, as_flags, python_m
from bench.ppo import RUBRIC, trained_inputs

PROMPTS = 400
NOISE = (0.05, 0.15)  # configs/labeling.yaml's two simulated labelers
ENSEMBLE = 3
FIGURES = ("eval_accuracy", "eval_gold_accuracy", "eval_ece")


def tie_tolerance() -> float:
    from labeling_ui.config import DEFAULT_CONFIG, load_config

    return load_config(DEFAULT_CONFIG).tie_tolerance


def write_labels(export_dir: Path, demo_dir: Path, prompts: int, tolerance: float, seed: int = 0) -> dict[str, float]:
    """rankings.jsonl as the export writes it, one ranking per simulated labeler and prompt; the share of tied
    pairs."""
    from labeling_ui.simulate import noisy_ranks
    from pipeline.demo import data as demo
    from pipeline.demo.rubric import house_style_score

    rng = random.Random(seed)
    rows, tied, pairs = [], 0, 0
    for line in (demo_dir / "prompts.jsonl").read_text().splitlines()[:prompts]:
        row = json.loads(line)
        responses = demo.replies_in_styles(row, 4, rng)
        gold = [house_style_score(row["prompt"][-1]["content"], r) for r in responses]
        for labeler, sigma in enumerate(NOISE):
            ranks = noisy_ranks(gold, sigma, random.Random(f"{seed}-{labeler}-{row['id']}"), tolerance)
            tied += sum(a == b for i, a in enumerate(ranks) for b in ranks[i + 1 :])
            pairs += len(ranks) * (len(ranks) - 1) // 2
            item = {"group_id": row["id"], "item_id": f"{row['id']}-1", "labeler": f"sim-{labeler + 1}"}
            rows.append({**item, "prompt": row["prompt"], "responses": responses, "ranks": ranks, "simulated": True})
    export_dir.mkdir(parents=True, exist_ok=True)
    (export_dir / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"rankings": len(rows), "tied_pair_share": tied / pairs}


def run(ws: Workspace) -> CaseResult:
    result = CaseResult("rm_labels", "Reward model on simulated labels: ties dropped vs modelled, an ensemble")
    prompts = 120 if ws.quick else PROMPTS
    seeds = range(ws.repeats)
    tolerance = tie_tolerance()
    sft = trained_inputs(ws)["sft"]
    export = ws.work / "rm_labels" / "export"
    labels = write_labels(export, ws.demo_dir(), prompts, tolerance)
    flags = as_flags({"num_train_epochs": 1, "save_strategy": "no", "report_to": "none", "rubric": RUBRIC})
    result.settings = {
        "prompts": prompts,
        "replies_per_prompt": 4,
        "labelers_noise": list(NOISE),
        "tie_tolerance": tolerance,
        **labels,
        "seeds": list(seeds),
        "ensemble": ENSEMBLE,
        "epochs": 1,
    }

    def train(variant: str, seed: int, *extra: str) -> dict:
        run_dir = ws.run_dir("rm_labels", variant, seed)
        args = ["--config", "configs/rm.yaml", "--run", "m", "--runs_dir", str(run_dir)]
        args += ["--model_name_or_path", str(sft), "--preferences", str(export), "--seed", str(seed), *flags, *extra]
        print(f"  [rm_labels] {variant}, seed {seed}", flush=True)
        process = ws.measure(python_m("reward.train", args), run_dir, timeout=3600)
        metrics = json.loads((run_dir / "m" / "rm" / "summary.json").read_text())["metrics"]
        return {"wall_s": process["wall_s"], **{k: metrics[k] for k in FIGURES}, "raw": metrics}

    for seed in seeds:
        for loss in ("kway", "kway_ties"):
            figures = train(loss, seed, "--loss", loss)
            result.runs.setdefault(loss, []).append({"round": seed, **{k: figures[k] for k in (*FIGURES, "wall_s")}})
    winner = max(("kway", "kway_ties"), key=lambda loss: _median(result.runs[loss], "eval_gold_accuracy"))
    result.notes.append(
        f"Median gold agreement over {len(seeds)} seed(s): kway {_median(result.runs['kway'], 'eval_gold_accuracy'):.3f}, "
        f"kway_ties {_median(result.runs['kway_ties'], 'eval_gold_accuracy'):.3f}; {winner} is the better here."
    )

    figures = train("ensemble", 0, "--loss", winner, "--ensemble", str(ENSEMBLE))
    raw = figures["raw"]
    for member in raw["members"]:
        result.runs[f"ensemble_member_{member['member']}"] = [{"round": 0, **{k: member[k] for k in FIGURES}}]
    keys = (*FIGURES, "eval_disagreement", "eval_disagreement_right", "eval_disagreement_wrong", "wall_s")
    result.runs["ensemble"] = [{"round": 0, **{k: (raw | figures).get(k) for k in keys}}]
    right, wrong = raw["eval_disagreement_right"], raw["eval_disagreement_wrong"]
    if right is not None and wrong is not None:
        result.notes.append(
            f"Ensemble of {ENSEMBLE} ({winner}): disagreement {wrong:.3f} on the held-out pairs it orders wrong, "
            f"{right:.3f} on those it orders right ({wrong / right:.2f}x)."
        )
    return result


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)
