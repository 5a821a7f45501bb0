"""Active selection against random at the same label budget (case ``active_selection``).

Two rounds, as the pipeline runs them with ``labels_per_round`` (both arms share round 1):
- round 1: the pool's items in random order (``reward.select --by random``), imported into a labeling database,
  ranked by the simulated labelers until the budget is spent (``labeling_ui simulate --until-rankings``), exported,
  and a reward-model ensemble of 3 trained on the labels (``reward.train --ensemble 3``);
- round 2, per arm: new replies for the same prompts, given their priorities (``active``: round 1's ensemble
  disagreement; ``random``: a hash), imported into a copy of round 1's database, labeled until twice the budget, and
  a new ensemble trained on all the labels. Then PPO from the SFT policy against that ensemble.

The replies are the demo's styles (no policy sampling: the selection, not the generation, is measured). Figures: the
final ensemble's gold agreement on a fixed held-out set (prompts never labeled, each with 4 replies; the pairs the
gold rubric orders), its own held-out figures, and PPO's gold score at the end of training. One run per seed.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

import numpy as np

from bench.core import CaseResult, Workspace, python_m
from bench.ppo import RUBRIC, trained_inputs
from pipeline.lib.tables import read_jsonl, write_jsonl

POOL, HELD_OUT, BUDGET, ENSEMBLE = 300, 100, 100, 3
SEEDS = (0, 1, 2)
PPO_EPISODES = 320  # half of configs/ppo.yaml's: six PPO runs per invocation
ARMS = ("random", "active")


def reply_rows(prompts: list[dict], rng: random.Random) -> list[dict]:
    """Candidates rows (as ``pipeline.candidates`` writes them) with 4 replies in distinct demo styles each."""
    from pipeline.demo import data as demo

    return [
        {"prompt_id": p["id"], "prompt": p["prompt"], "candidates": demo.replies_in_styles(p, 4, rng)} for p in prompts
    ]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return path


def gold_agreement(members: list[Path], rows: list[dict]) -> float:
    """How often the ensemble's mean score orders a held-out pair as the gold rubric does (gold ties left out)."""
    from pipeline.demo.rubric import house_style_score
    from reward.select import member_scores

    agree = total = 0
    for row, scores in zip(rows, member_scores(members, rows, 32), strict=True):
        mean = scores.mean(axis=0)
        gold = [house_style_score(row["prompt"][-1]["content"], text) for text in row["candidates"]]
        for i in range(len(gold)):
            for j in range(i + 1, len(gold)):
                if gold[i] != gold[j]:
                    total += 1
                    agree += (mean[i] - mean[j]) * (gold[i] - gold[j]) > 0
    return agree / total


def run(ws: Workspace) -> CaseResult:
    result = CaseResult("active_selection", "Active selection (ensemble disagreement) against random, same budget")
    pool, held_out, budget = (60, 30, 20) if ws.quick else (POOL, HELD_OUT, BUDGET)
    seeds = SEEDS[:1] if ws.quick else SEEDS
    sft = trained_inputs(ws)["sft"]
    prompts = read_jsonl(ws.demo_dir() / "prompts.jsonl")
    result.settings = {
        "pool_prompts": pool,
        "held_out_prompts": held_out,
        "labels_per_round": budget,
        "rounds": 2,
        "ensemble": ENSEMBLE,
        "seeds": list(seeds),
        "ppo_episodes": 0 if ws.quick else PPO_EPISODES,
        "replies": "4 per prompt, demo styles; round 2: new replies for the same prompts",
    }

    def step(run_dir: Path, module: str, *args: str, timeout: float = 3600) -> None:
        ws.measure(python_m(module, list(args)), run_dir, timeout=timeout)

    def label_and_train(run_dir: Path, candidates: Path, r: int, seed: int, select: list[str]) -> list[Path]:
        """One round in ``run_dir`` (run ``m``): select, import, simulate up to the budget, export, train."""
        common = ["--run", "m", "--runs_dir", str(run_dir)]
        db = ["--db", f"sqlite:///{run_dir / 'labels.db'}"]
        step(run_dir, "reward.select", *common, "--candidates", str(candidates), "--round", str(r), *select)
        selected = run_dir / "m" / "selection" / "candidates.jsonl"
        step(run_dir, "labeling_ui", "import-candidates", *common, *db, "--file", str(selected))
        step(run_dir, "labeling_ui", "simulate", *common, *db, "--rubric", RUBRIC, "--until-rankings", str(r * budget))
        step(run_dir, "labeling_ui", "export", *common, *db)
        rm = ["--config", "configs/rm.yaml", *common, "--model_name_or_path", str(sft), "--seed", str(seed)]
        rm += ["--ensemble", str(ENSEMBLE), "--save_strategy", "no", "--report_to", "none", "--rubric", RUBRIC]
        step(run_dir, "reward.train", *rm)
        members = json.loads((run_dir / "m" / "rm" / "ensemble.json").read_text())["members"]
        return [run_dir / "m" / "rm" / member for member in members]

    for seed in seeds:
        rng = random.Random(seed)
        chosen = rng.sample(prompts, pool + held_out)
        base = ws.work / "active_selection" / f"seed{seed}"
        shutil.rmtree(base, ignore_errors=True)
        first = write_rows(base / "round1.jsonl", reply_rows(chosen[:pool], random.Random(f"{seed}-round1")))
        second = write_rows(base / "round2.jsonl", reply_rows(chosen[:pool], random.Random(f"{seed}-round2")))
        held = reply_rows(chosen[pool:], random.Random(f"{seed}-held"))
        print(f"  [active_selection] seed {seed}: round 1 (shared)", flush=True)
        shared = base / "round1"
        label_and_train(shared, first, 1, seed, ["--by", "random", "--seed", "1"])
        for arm in ARMS:
            print(f"  [active_selection] seed {seed}: round 2, {arm}", flush=True)
            run_dir = base / arm
            run_dir.mkdir(parents=True)
            shutil.copy(shared / "labels.db", run_dir / "labels.db")
            by = ["--by", "disagreement", "--reward_models", str(shared / "m" / "rm")]
            members = label_and_train(
                run_dir, second, 2, seed, by if arm == "active" else ["--by", "random", "--seed", "2"]
            )
            rm = json.loads((run_dir / "m" / "rm" / "summary.json").read_text())["metrics"]
            selection = json.loads((run_dir / "m" / "selection" / "summary.json").read_text())["metrics"]
            figures = {
                "round": seed,
                "held_out_gold_agreement": gold_agreement(members, held),
                "rm_eval_accuracy": rm["eval_accuracy"],
                "rm_eval_gold_accuracy": rm["eval_gold_accuracy"],  # on its own held-out labeled prompts
            }
            if arm == "active":
                figures["disagreement_median"] = selection["score_median"]
            if not ws.quick:
                ppo = ["--config", "configs/ppo.yaml", "--run", "m", "--runs_dir", str(run_dir)]
                ppo += ["--model_name_or_path", str(sft), "--reward_model_path", str(run_dir / "m" / "rm")]
                ppo += ["--prompts", str(ws.demo_dir() / "prompts.jsonl"), "--total_episodes", str(PPO_EPISODES)]
                ppo += ["--report_to", "none", "--rubric", RUBRIC, "--seed", str(seed)]
                step(run_dir, "ppo.train", *ppo)
                metrics = json.loads((run_dir / "m" / "ppo" / "summary.json").read_text())["metrics"]
                figures |= {"ppo_gold_score": metrics["gold_score_last"], "ppo_kl": metrics["kl_last"]}
            result.runs.setdefault(arm, []).append(figures)

    gaps = [
        a["held_out_gold_agreement"] - r["held_out_gold_agreement"]
        for a, r in zip(result.runs["active"], result.runs["random"], strict=True)
    ]
    result.notes.append(
        f"Gold agreement on {held_out} held-out prompts after round 2 ({2 * budget} rankings each): active minus "
        f"random {statistics.mean(gaps) * 100:+.1f} points on average over {len(gaps)} seed(s) "
        f"(per seed: {', '.join(f'{g * 100:+.1f}' for g in gaps)}). Target: +2.0 points or more."
    )
    if not ws.quick:
        pairs = zip(result.runs["active"], result.runs["random"], strict=True)
        ppo_gaps = np.array([a["ppo_gold_score"] - r["ppo_gold_score"] for a, r in pairs])
        result.notes.append(
            f"PPO's gold score at the end of training: active minus random {ppo_gaps.mean():+.3f} on average "
            f"(per seed: {', '.join(f'{g:+.3f}' for g in ppo_gaps)})."
        )
    return result
