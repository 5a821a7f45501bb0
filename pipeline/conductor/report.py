"""The pipeline's report: ``runs/<run>/report.md``, ``report.html`` and PNG plots, from the stages' own files.

Everything comes from what the stages wrote (summary.json, the SFT trainer state, PPO's history.jsonl, the
evaluation's samples), so the report can be rebuilt at any time: ``python -m pipeline report --run R``.
Sections: the stages, SFT loss curves, reward model accuracy and calibration, PPO reward and KL over steps, the gold
rubric against the reward model over PPO steps (reward over-optimisation shows as the two lines parting), the
evaluation of every round, sample responses before and after, and where the W&B runs are.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.conductor.config import ROUND_STAGES, STAGES, round_run, stage_dir
from pipeline.conductor.stages import BY_NAME
from pipeline.lib import runs
from pipeline.lib.prompts import load_prompts, user_message
from pipeline.lib.tables import read_jsonl

SAMPLES_SHOWN = 3


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines + [""]


def _plot(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def sft_log_history(sft_dir: Path) -> list[dict]:
    """The Trainer's log history of the SFT run, from its latest checkpoint's trainer_state.json."""
    states = sorted(
        (sft_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[-1]),
    )
    return json.loads(states[-1].read_text()).get("log_history", []) if states else []


def _sft_section(sft_dir: Path, out: Path) -> list[str]:
    summary = runs.read_summary(sft_dir)
    if summary is None:
        return ["## SFT", "", "No SFT run yet.", ""]
    m = summary["metrics"]
    lines = [
        "## SFT",
        "",
        f"Eval loss {_fmt(m.get('eval_loss_before'))} before training, {_fmt(m.get('eval_loss_after'))} after "
        f"({m.get('global_step')} steps, {_fmt(m.get('epochs'))} epochs, {runs.format_duration(summary['wall_time_s'])}).",
        "",
    ]
    history = sft_log_history(sft_dir)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train or evals:

        def draw(plt):
            fig, ax = plt.subplots(figsize=(6, 3.2))
            if train:
                ax.plot(*zip(*train, strict=True), label="train loss")
            if evals:
                ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
            ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend()
            ax.set_title("SFT loss")
            return fig

        lines += [f"![SFT loss]({_plot(out / 'report_sft_loss.png', draw)})", ""]
    return lines


def _labels_section(export_dirs: list[tuple[int, Path]]) -> list[str]:
    rows = []
    for r, directory in export_dirs:
        m = (runs.read_summary(directory) or {}).get("metrics")
        if m:
            agreement = m.get("agreement") or {}
            who = "simulated" if m.get("all_simulated") else "people"
            rows.append(
                [
                    r,
                    m["items"],
                    m["rankings"],
                    m["pairs"],
                    f"{m['labelers']} ({who})",
                    agreement.get("pairwise_agreement"),
                    agreement.get("kendall_tau"),
                    agreement.get("krippendorff_alpha"),
                ]
            )
    if not rows:
        return []
    header = [
        "round",
        "items",
        "rankings",
        "pairs",
        "labelers",
        "pairwise agreement",
        "Kendall's tau",
        "Krippendorff's alpha",
    ]
    return [
        "## Labels",
        "",
        "Every label so far, as exported for the reward model of each round.",
        "",
        *_table(header, rows),
    ]


def _selection_lines(config) -> list[str]:
    """Which items each round's labels went to (``reward.select``), when a budget or active selection chose them."""
    lines = []
    for r in range(1, config.rounds + 1):
        m = (runs.read_summary(stage_dir(config, "selection", r)) or {}).get("metrics")
        if not m:
            continue
        if m["by"] == "random":
            how = "in random order"
        else:
            measure = "disagreement" if m["by"] == "disagreement" else "uncertainty (mean preference nearest 0.5)"
            how = (
                f"most disputed first: by the {measure} of round {r - 1}'s ensemble of {m['members']} "
                f"(from {_fmt(m['score_min'])} to {_fmt(m['score_max'])}, median {_fmt(m['score_median'])})"
            )
        lines.append(f"- round {r}: {m['items']} new items, handed out {how}.")
    if not lines:
        return []
    budget = f"{config.labels_per_round} rankings per round" if config.labels_per_round else "every item"
    return ["", f"Label budget: {budget} (`labels_per_round`), selection `{config.selection}`:", "", *lines, ""]


def _rm_section(rm_dir: Path, out: Path, title: str) -> list[str]:
    summary = runs.read_summary(rm_dir)
    if summary is None:
        return []
    m = summary["metrics"]
    rows = [
        [name, m.get(key)]
        for name, key in (
            ("held-out accuracy", "eval_accuracy"),
            ("agreement with the gold rubric", "eval_gold_accuracy"),
            ("expected calibration error", "eval_ece"),
            ("reward mean", "reward_mean"),
            ("reward std", "reward_std"),
            ("training pairs", "train_pairs"),
            ("held-out pairs", "eval_pairs"),
        )
        if m.get(key) is not None
    ]
    lines = [f"## {title}", "", *_table(["figure", "value"], rows)]
    if m.get("members"):
        lines += _ensemble_lines(m)
    by_gap = m.get("accuracy_by_gap") or {}
    bins = m.get("calibration") or m.get("calibration_bins")
    if by_gap or bins:

        def draw(plt):
            fig, axes = plt.subplots(1, 2 if bins else 1, figsize=(8 if bins else 4.5, 3.2), squeeze=False)
            if by_gap:
                gaps = sorted(by_gap, key=lambda g: float(g))
                values = [by_gap[g]["accuracy"] if isinstance(by_gap[g], dict) else by_gap[g] for g in gaps]
                axes[0][0].bar([str(g) for g in gaps], values)
                axes[0][0].set_xlabel("rank gap"), axes[0][0].set_ylabel("accuracy"), axes[0][0].set_ylim(0, 1)
                axes[0][0].set_title("accuracy by rank gap")
            if bins:
                ax = axes[0][-1]
                conf = [b["confidence"] for b in bins if b.get("count")]
                acc = [b["accuracy"] for b in bins if b.get("count")]
                ax.plot([0.5, 1], [0.5, 1], "k--", lw=1, label="perfect")
                ax.plot(conf, acc, "o-", label="reward model")
                (
                    ax.set_xlabel("predicted P(chosen)"),
                    ax.set_ylabel("observed"),
                    ax.legend(),
                    ax.set_title("calibration"),
                )
            return fig

        lines += [f"![reward model]({_plot(out / f'report_{rm_dir.parent.name}_rm.png', draw)})", ""]
    return lines


def _ensemble_lines(m: dict) -> list[str]:
    """An ensemble's members side by side with the ensemble (mean score), and whether its disagreement marks its
    mistakes."""
    keys = ("eval_accuracy", "eval_gold_accuracy", "eval_ece")
    rows = [[f"member {x['member']} (seed {x['seed']})", *(x.get(k) for k in keys)] for x in m["members"]]
    rows.append([f"ensemble of {m['ensemble']} (mean score)", *(m.get(k) for k in keys)])
    lines = ["", *_table(["model", "held-out accuracy", "gold agreement", "ECE"], rows)]
    right, wrong = m.get("eval_disagreement_right"), m.get("eval_disagreement_wrong")
    if right is not None and wrong is not None:
        verdict = "higher" if wrong > right else "not higher"
        lines += [
            f"The members' disagreement (std of their margins) on held-out pairs is {verdict} where the ensemble is "
            f"wrong: {wrong:.3f} on the pairs it orders wrong, {right:.3f} on those it orders right.",
            "",
        ]
    return lines


def _gold_axis(ax, steps: list, gold: list) -> None:
    """The gold rubric's score over the PPO steps, on a right-hand axis of its own."""
    twin = ax.twinx()
    twin.plot(steps, gold, color="C2", lw=2, label="gold rubric")
    twin.set_ylabel("gold rubric score", color="C2")


def _ppo_section(ppo_dir: Path, out: Path, title: str) -> list[str]:
    history = read_jsonl(ppo_dir / "history.jsonl")
    if not history:
        return []
    steps = [h["step"] for h in history]

    def series(key):
        return [h.get(key) for h in history]

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        axes[0].plot(steps, series("objective/scores"), label="reward-model score")
        axes[0].plot(steps, series("objective/rlhf_reward"), label="score - KL penalty")
        axes[0].set_xlabel("PPO step"), axes[0].legend(), axes[0].set_title("reward")
        axes[1].plot(steps, series("objective/kl"), color="C3")
        axes[1].set_xlabel("PPO step"), axes[1].set_title("KL to the reference (nats)")
        return fig

    lines = [
        f"## {title}",
        "",
        f"![PPO reward and KL]({_plot(out / f'report_{ppo_dir.parent.name}_ppo.png', draw)})",
        "",
    ]
    gold = series("rollout/gold_score")
    if any(g is not None for g in gold):

        def draw_gold(plt):
            fig, ax = plt.subplots(figsize=(6, 3.2))
            ax.plot(steps, series("objective/scores"), color="C0", label="reward model (normalised)")
            ax.set_xlabel("PPO step"), ax.set_ylabel("reward-model score", color="C0")
            _gold_axis(ax, steps, gold)
            ax.set_title("reward model vs gold rubric on the rollouts")
            return fig

        lines += [
            "The reward model's score and the gold rubric's score of the same rollouts. While both rise, PPO "
            "learns what the labelers wanted; a reward-model score that keeps rising while the gold score "
            "falls is reward over-optimisation.",
            "",
            f"![gold vs reward model]({_plot(out / f'report_{ppo_dir.parent.name}_gold.png', draw_gold)})",
            "",
        ]
    members = sorted(k for k in history[0] if k.startswith("reward/model_"))
    if len(members) > 1:

        def draw_members(plt):
            fig, ax = plt.subplots(figsize=(6, 3.2))
            for key in members:
                ax.plot(steps, series(key), lw=1, label=key.split("/")[1].replace("model_", "member "))
            ax.plot(steps, series("reward/std"), "k--", label="disagreement (std)")
            ax.set_xlabel("PPO step"), ax.set_ylabel("normalised score"), ax.legend(fontsize=7, loc="upper left")
            if any(g is not None for g in gold):
                _gold_axis(ax, steps, gold)
            ax.set_title("each reward model, their disagreement, and the gold rubric")
            return fig

        lines += [
            "Each reward model's score of the rollouts, the spread between them, and the gold score. Members that "
            "drift apart while the gold score stalls are the over-optimisation that an ensemble's min or "
            "mean - k * std holds back.",
            "",
            f"![ensemble members]({_plot(out / f'report_{ppo_dir.parent.name}_members.png', draw_members)})",
            "",
        ]
    return lines


def _eval_rows(eval_dirs: list[tuple[str, Path]]) -> list[list[Any]]:
    rows = []
    for name, directory in eval_dirs:
        m = (runs.read_summary(directory) or {}).get("metrics")
        if m:
            rows.append(
                [
                    name,
                    m["sft"].get("gold_score"),
                    m["ppo"].get("gold_score"),
                    m["sft"]["reward_mean"],
                    m["ppo"]["reward_mean"],
                    m["win_rate_ppo_vs_sft"],
                    m["ppo"]["kl_to_reference"],
                    m["sft"]["response_length"],
                    m["ppo"]["response_length"],
                ]
            )
    return rows


def _samples(eval_dir: Path) -> list[str]:
    rows = read_jsonl(eval_dir / "samples.jsonl")
    if not rows:
        return []
    # The prompts themselves, from the file the evaluation read (recorded in its summary.json).
    recorded = ((runs.read_summary(eval_dir) or {}).get("inputs") or {}).get("prompts") or {}
    prompts = {}
    if recorded.get("path") and Path(recorded["path"]).is_file():
        prompts = {r["prompt_id"]: user_message(r["prompt"]) for r in load_prompts(recorded["path"])}
    # The largest gold improvements first: what PPO changed, at a glance.
    rows.sort(key=lambda r: r["ppo"].get("gold", 0) - r["sft"].get("gold", 0), reverse=True)
    lines = ["## Sample responses before and after PPO", ""]
    for r in rows[:SAMPLES_SHOWN]:
        lines += [f"**Prompt {r['prompt_id']}**", ""]
        if r["prompt_id"] in prompts:
            lines += ["```text", prompts[r["prompt_id"]].replace("```", "'''"), "```", ""]
        for name in ("sft", "ppo"):
            s = r[name]
            gold = f", gold {s['gold']:.2f}" if "gold" in s else ""
            lines += [
                f"{name.upper()} (reward {s['score']:.2f}{gold}):",
                "",
                "```text",
                s["response"].replace("```", "'''"),
                "```",
                "",
            ]
    return lines


def _wandb_section(run_dir: Path) -> list[str]:
    found = sorted(run_dir.rglob("wandb/offline-run-*")) + sorted(run_dir.rglob("wandb/run-*"))
    if not found:
        return []
    lines = [
        "## W&B runs",
        "",
        "Each stage logged to W&B (grouped by run, one job type per stage). Offline runs are uploaded with "
        "`wandb sync DIR` once a key is set:",
        "",
    ]
    lines += [
        f"- {p.relative_to(run_dir).parts[0] if p.relative_to(run_dir).parts[0] != 'wandb' else ''} `{p}`"
        for p in found
    ]
    return lines + [""]


def _best_of_n_lines(eval_dir: Path, run_dir: Path) -> list[str]:
    """The last round's PPO against best-of-n from the SFT policy: its table, the sentence that says which won, PPO's
    snapshots over training (when it saved some), and the score-against-KL plot that draws them all."""
    m = (runs.read_summary(eval_dir) or {}).get("metrics") or {}
    rows = m.get("best_of_n") or []
    if not rows:
        return []
    gold = "gold_score" in rows[0]
    table = [
        [f"best-of-{r['n']}", r["kl"], r.get("gold_score") if gold else r["reward_mean"], r["response_length"]]
        for r in rows
    ]
    for name in (n for n in ("ppo", "dpo") if n in m):
        p = m[name]
        score = p.get("gold_score") if gold else p["reward_mean"]
        table.append([name.upper(), p["kl_to_reference"], score, p["response_length"]])
    lines = [
        "### PPO against best-of-n (and DPO, when trained)",
        "",
        f"Best-of-n samples n replies from the SFT policy and keeps the reward model's favourite "
        f"({m['best_of_n_prompts']} held-out prompts); its KL to SFT is log n - (n-1)/n.",
        "",
        *_table(["policy", "KL to SFT", "gold score" if gold else "reward", "length"], table),
        m["best_of_n_verdict"],
        "",
        *([m["ppo_snapshots_summary"], ""] if m.get("ppo_snapshots_summary") else []),
    ]
    frontier = eval_dir / "kl_frontier.png"
    if frontier.exists():
        name = f"report_{eval_dir.parent.name}_kl_frontier.png"
        shutil.copyfile(frontier, run_dir / name)
        lines += [f"![score against KL]({name})", ""]
    return lines


def stage_rows(config) -> list[list[Any]]:
    """A row for each directory of each stage of each round that holds a summary.json, in the order they ran."""
    rows = []
    for r in range(1, config.rounds + 1):
        names = STAGES if r == 1 else ROUND_STAGES
        for directory in (directory for name in names for directory in BY_NAME[name].directories):
            summary = runs.read_summary(stage_dir(config, directory, r))
            if summary:
                rows.append(
                    [
                        directory if r == 1 else f"{directory} (round {r})",
                        summary["status"],
                        runs.format_duration(summary["wall_time_s"]),
                        summary["started_at"],
                    ]
                )
    return rows


def write_report(config) -> Path:
    """Write runs/<run>/report.md, report.html and the plots; returns the markdown path."""
    run_dir = Path(config.runs_dir) / config.run
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Pipeline report: run `{config.run}`", ""]
    if config.rubric:
        lines += [f"Gold figures (gold accuracy, gold score) are by the rubric `{config.rubric}`.", ""]
    else:
        lines += ["No gold rubric is set (`rubric:` in the pipeline config): the figures are the reward model's.", ""]

    lines += ["## Stages", "", *_table(["stage", "status", "wall time", "started"], stage_rows(config))]

    eval_dirs = [(f"round {r}", stage_dir(config, "eval", r)) for r in range(1, config.rounds + 1)]
    eval_rows = _eval_rows(eval_dirs)
    if eval_rows:
        lines += [
            "## The policy: SFT against PPO on held-out prompts",
            "",
            *_table(
                [
                    "",
                    "gold SFT",
                    "gold PPO",
                    "reward SFT",
                    "reward PPO",
                    "PPO win rate",
                    "KL",
                    "length SFT",
                    "length PPO",
                ],
                eval_rows,
            ),
        ]
        if len(eval_rows) > 1:

            def draw(plt):
                fig, ax = plt.subplots(figsize=(5, 3))
                ax.plot(range(1, len(eval_rows) + 1), [row[2] for row in eval_rows], "o-", label="PPO")
                ax.axhline(eval_rows[0][1], color="k", ls="--", label="SFT")
                ax.set_xlabel("round"), ax.set_ylabel("gold rubric score"), ax.legend()
                return fig

            lines += [f"![gold score by round]({_plot(run_dir / 'report_rounds.png', draw)})", ""]
        lines += _best_of_n_lines(eval_dirs[-1][1], run_dir)
    lines += _sft_section(stage_dir(config, "sft", 1), run_dir)
    lines += _labels_section([(r, stage_dir(config, "export", r)) for r in range(1, config.rounds + 1)])
    lines += _selection_lines(config)
    for r in range(1, config.rounds + 1):
        suffix = "" if config.rounds == 1 else f" (round {r})"
        lines += _rm_section(stage_dir(config, "rm", r), run_dir, f"Reward model{suffix}")
        lines += _ppo_section(stage_dir(config, "ppo", r), run_dir, f"PPO{suffix}")
    lines += _samples(stage_dir(config, "eval", config.rounds))
    lines += _wandb_section(run_dir)
    lines += [
        f"Runs: {', '.join(f'`{run_dir.parent / round_run(config, r)}`' for r in range(1, config.rounds + 1))}",
        "",
    ]

    markdown = "\n".join(lines)
    path = run_dir / "report.md"
    path.write_text(markdown)
    path.with_suffix(".html").write_text(to_html(markdown, f"Pipeline report: {config.run}"))
    return path


def to_html(markdown: str, title: str) -> str:
    """A standalone HTML page. Raw HTML in the markdown is escaped: sample responses are untrusted model output."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
        "pre{background:#f5f5f5;padding:.5rem;white-space:pre-wrap}img{max-width:100%}"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n{body}</body></html>\n"
    )
