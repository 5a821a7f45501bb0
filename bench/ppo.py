"""PPO: the project's stage (``ppo.train``) against TRL 1.12's PPOTrainer (the oracle), full against LoRA, one
process against two under ZeRO.

``ppo``: the stage and the oracle (``bench/baselines/ppo_plain.py`` in its own TRL 1.12 venv, ``bench/oracle.py``)
on the same models, prompts, flags and seeds, one seed per round. The models are a short SFT run of the embedded
tiny Llama and a reward model trained by the project's own stages on demo replies ranked by the demo's gold rubric,
built once and cached under ``runs_dir/_bench/`` (or ``--ppo_run DIR``), so the learning curves (RM score, gold
score, KL against episodes) mean something. The stage's steps are read from its ``history.jsonl`` (its loop has no
transformers callbacks); the oracle's from the harness, which also times TRL's phases. ``ppo_lora`` and
``ppo_zero`` run the stage alone, on a stand-in reward model (the tiny Llama with a scalar head).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

from bench import oracle, sft
from bench.core import (
    BenchError,
    CaseResult,
    Comparison,
    Shape,
    Workspace,
    as_flags,
    check_within,
    compare,
    harness_cmd,
    python_m,
    random_llama,
    run_rounds,
    run_settings,
)
from pipeline.lib.launch import accelerate_arguments
from pipeline.lib.tables import read_jsonl, write_jsonl

TARGET_LORA_MEMORY = ("<=", 0.7)
TARGET_SPEED = (">=", 1.3)  # the stage's own loop is to be clearly faster than TRL's, on the same work
TARGET_MEMORY = ("<=", 1.0)
RUBRIC = "pipeline.demo.rubric:house_style_score"
PHASES = ("generation", "reference", "value", "scoring", "optimisation")
# About 60M parameters: large enough that the models' own memory shows next to the runtime's.
WIDE = Shape(hidden=768, layers=8, heads=12, intermediate=2048)
# The recipe of the cached SFT policy and reward model; a new name when it changes, so the cache is rebuilt.
TRAINED = "ppo-models-v1"
# One epoch, and nothing the policy does not need: no evaluation, checkpoints, samples or tracking.
SFT_FLAGS = [
    *as_flags({"num_train_epochs": 1, "eval_strategy": "no", "save_strategy": "no", "report_to": "none"}),
    *sft.STAGE_EXTRAS_OFF,
]
RM_FLAGS = as_flags({"num_train_epochs": 1, "save_strategy": "no", "report_to": "none", "rubric": RUBRIC})
RM_PROMPTS = 300  # x 4 ranked replies: held-out agreement with the rubric is above 90% after one epoch


def build_inputs(ws: Workspace, base: str) -> dict[str, Path]:
    """The SFT model (a copy of ``base``), a stand-in reward model with a scalar head, and its statistics."""
    root = ws.work / "ppo_inputs" / Path(base).name
    paths = {"sft": root / "sft", "rm": root / "rm", "stats": root / "reward_stats.json"}
    if paths["stats"].exists():
        return paths
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    shutil.copytree(base, paths["sft"], dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    with suppress_seqcls_warning():  # the new score head is expected
        rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(paths["rm"])
    tokenizer.save_pretrained(paths["rm"])
    paths["stats"].write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    return paths


def write_ranked_export(
    export_dir: Path, demo_dir: Path, k: int = 4, seed: int = 0, prompts: int | None = None
) -> None:
    """K replies per demo prompt in distinct demo styles, ranked by the gold rubric: an export as the labeling
    stage writes it (rankings.jsonl for the K-way loss, preferences.jsonl pairs), labels marked simulated."""
    from pipeline.demo import data as demo
    from pipeline.demo.rubric import house_style_score
    from pipeline.lib.pairs import ranking_to_pairs

    rng = random.Random(seed)
    export_dir.mkdir(parents=True, exist_ok=True)
    rankings, preferences = [], []
    for row in read_jsonl(demo_dir / "prompts.jsonl")[:prompts]:
        responses = demo.replies_in_styles(row, k, rng)
        gold = [round(house_style_score(row["prompt"][-1]["content"], r), 3) for r in responses]
        ranks = [sorted(set(gold), reverse=True).index(g) + 1 for g in gold]  # dense, 1 = best
        if len(set(ranks)) < 2:
            continue
        item = {"group_id": row["id"], "item_id": f"{row['id']}-1", "labeler": "rubric", "simulated": True}
        rankings.append({**item, "prompt": row["prompt"], "responses": responses, "ranks": ranks, "is_gold": False})
        for chosen, rejected, gap in ranking_to_pairs(responses, ranks):
            preferences.append(
                {
                    **item,
                    "prompt": row["prompt"],
                    "rank_gap": gap,
                    "chosen": [{"role": "assistant", "content": responses[chosen]}],
                    "rejected": [{"role": "assistant", "content": responses[rejected]}],
                }
            )
    for name, rows in (("rankings.jsonl", rankings), ("preferences.jsonl", preferences)):
        write_jsonl(export_dir / name, rows)
    summary = {"stage": "export", "metrics": {"pairs": len(preferences), "all_simulated": True}}
    (export_dir / "summary.json").write_text(json.dumps(summary))


def trained_inputs(ws: Workspace) -> dict[str, Path]:
    """An SFT policy and a reward model made by the project's own stages, built once into the runs cache.

    SFT: one epoch of ``pipeline.sft`` on the demo split (configs/sft.yaml otherwise). Reward model: ``reward.train``
    (configs/rm.yaml: the K-way loss) on the demo prompts, each with 4 replies in distinct demo styles ranked by the
    gold rubric. ``--ppo_run DIR`` uses that run folder's models instead.
    """
    stats = ws.work / "ppo_inputs" / "identity_stats.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    # Scores are not normalised (mean 0, std 1): TRL's PPO has no normalisation, and both sides get the same scores.
    stats.write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    root = ws.ppo_run or ws.runs_dir / "_bench" / TRAINED / "m"
    paths = {
        "sft": root / "sft" / "model",
        "rm": root / "rm" / "model",
        "stats": stats,
        "rm_summary": root / "rm" / "summary.json",
    }
    if paths["rm"].is_dir() and paths["sft"].is_dir():
        return paths
    if ws.ppo_run:
        raise BenchError(f"--ppo_run {ws.ppo_run}: expected sft/model and rm/model in it")
    print(
        f"  [ppo] building the SFT policy and reward model once, into {root.parent} (about 3 minutes on 2 idle cores)",
        flush=True,
    )
    # Built in a side folder, renamed into place when complete; a stage whose summary.json exists (written last)
    # is not run again, so an interrupted build goes on where it stopped.
    partial = root.parent.with_name(f".{TRAINED}.partial")
    write_ranked_export(partial / "m" / "export", ws.demo_dir(), prompts=RM_PROMPTS)
    common = ["--run", "m", "--runs_dir", str(partial)]
    for module, stage, config, flags in (
        # On the demo model and SFT splits of the bench's runs dir (configs/sft.yaml names those of runs/).
        ("pipeline.sft", "sft", "configs/sft.yaml", [*sft.demo_inputs(ws), *SFT_FLAGS]),
        # From the run's SFT model, on the run's export.
        ("reward.train", "rm", "configs/rm.yaml", RM_FLAGS),
    ):
        if (partial / "m" / stage / "summary.json").exists():
            continue
        print(f"  [ppo] python -m {module} ...", flush=True)
        cmd = python_m(module, ["--config", config, *common, *flags])
        figures = ws.measure(cmd, partial / "logs" / stage, timeout=1800)
        print(f"  [ppo] {module}: {figures['wall_s']:.0f} s", flush=True)
    summary = json.loads((partial / "m" / "rm" / "summary.json").read_text()).get("metrics", {})
    print(
        f"  [ppo] reward model: held-out agreement with the gold rubric "
        f"{summary.get('eval_gold_accuracy', float('nan')):.1%}",
        flush=True,
    )
    shutil.rmtree(root.parent, ignore_errors=True)
    partial.rename(root.parent)
    return paths


def ppo_flags(
    steps: int,
    world_size: int = 1,
    batch: int = 8,
    accumulation: int = 2,
    response_length: int = 32,
    ppo_epochs: int = 2,
    seed: int = 0,
    learning_rate: float = 2e-5,
) -> list[str]:
    """The PPO flags both programs get. One step is batch x accumulation x processes episodes."""
    flags = {
        "total_episodes": steps * batch * accumulation * world_size,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation,
        "num_mini_batches": 1,
        "num_ppo_epochs": ppo_epochs,
        "local_rollout_forward_batch_size": batch,
        "response_length": response_length,
        "temperature": 0.7,
        "learning_rate": learning_rate,
        "kl_coef": 0.05,
        "missing_eos_penalty": 1.0,
        "stop_token": "eos",
        "seed": seed,
        "logging_steps": 1,
        "report_to": "none",
        "bf16": "false",
        "num_prompts": 200,
        "eval_prompts": 16,
        "max_prompt_length": 256,
        "num_sample_generations": 0,
        "per_device_eval_batch_size": batch,
        "gradient_checkpointing": "false",
    }
    return as_flags(flags)


# TRL's PPOTrainer saves checkpoints unless told not to (the stage's are off with --checkpoint_steps 0).
ORACLE_FLAGS = as_flags({"save_strategy": "no"})


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        raise BenchError(f"the run wrote no {path}")
    return read_jsonl(path)


def history_metrics(rows: list[dict], skip: int) -> dict[str, float]:
    """Steady-state figures from a per-step history (``elapsed_s``, ``episode``, ``timing/*``) after ``skip`` steps."""
    if len(rows) <= skip:
        raise BenchError(f"only {len(rows)} steps in the history; need more than the {skip} skipped")
    first, measured = (rows[skip - 1] if skip else None), rows[skip:]
    elapsed = measured[-1]["elapsed_s"] - (first["elapsed_s"] if first else 0.0)
    episodes = measured[-1]["episode"] - (first["episode"] if first else 0)
    out = {"steady_s": elapsed, "step_s": elapsed / len(measured), "episodes_per_s": episodes / elapsed}
    for phase in PHASES:
        values = [r[f"timing/{phase}_s"] for r in measured if f"timing/{phase}_s" in r]
        if values:
            out[f"{phase}_s_per_step"] = statistics.mean(values)
    if all("timing/step_s" in r for r in measured):
        # Optimisation as the harness takes it for TRL's loop: the step less its four rollout phases (advantages
        # and the PPO epochs), so both sides split a step the same way.
        rollout = [sum(r.get(f"timing/{p}_s", 0.0) for p in PHASES[:4]) for r in measured]
        out["optimisation_s_per_step"] = statistics.mean(
            max(r["timing/step_s"] - x, 0.0) for r, x in zip(measured, rollout, strict=True)
        )
    return out


CURVES = {"rm_score": "objective/scores", "gold_score": "rollout/gold_score", "kl": "objective/kl"}


def learning_figures(rows: list[dict]) -> dict:
    """The curves (value per step against episodes) and their first and last-quarter means, as the stage's
    summary takes them (a quarter of the run, at least one step)."""
    window = max(1, len(rows) // 4)
    out: dict = {"curve": {"episode": [r.get("episode") for r in rows]}}
    for name, key in CURVES.items():
        values = [r.get(key) for r in rows]
        out["curve"][name] = values
        last, head = [v for v in values[-window:] if v is not None], [v for v in values[:window] if v is not None]
        if last:
            out[f"{name}_last_quarter"] = statistics.mean(last)
        if head and name != "kl":
            out[f"{name}_first"] = statistics.mean(head)
    return out


class PPORunner:
    """The PPO runs of a case: the stage (``stage``) and the oracle (``oracle``) on one pair of models, ``steps``
    steps with the first ``skip`` not measured; ``base`` is a model to build a stand-in reward model from, or None
    for the trained pair (``trained_inputs``). Every run scores its rollouts with the demo's gold rubric, on the same
    demo prompts."""

    def __init__(self, ws: Workspace, case: str, base: str | None, steps: int, skip: int, **flag_kwargs):
        self.ws, self.case, self.steps, self.skip, self.flag_kwargs = ws, case, steps, skip, flag_kwargs
        self.inputs = trained_inputs(ws) if base is None else build_inputs(ws, base)

    def flags(self, seed: int = 0, world_size: int = 1) -> list[str]:
        return [*ppo_flags(self.steps, world_size, seed=seed, **self.flag_kwargs), "--rubric", RUBRIC]

    def stage_args(self, run_dir: Path, seed: int = 0, world_size: int = 1, extra: list[str] = ()) -> list[str]:
        """``ppo.train``'s flags: configs/ppo.yaml with the case's models and the demo prompts of the bench's runs
        dir, no checkpoints."""
        return [
            "--config",
            "configs/ppo.yaml",
            "--run",
            "bench",
            "--runs_dir",
            str(run_dir),
            "--model_name_or_path",
            str(self.inputs["sft"]),
            "--reward_model_path",
            str(self.inputs["rm"]),
            "--reward_stats",
            str(self.inputs["stats"]),
            "--prompts",
            str(self.ws.demo_dir() / "prompts.jsonl"),
            "--checkpoint_steps",
            "0",
            *self.flags(seed, world_size),
            *extra,
        ]

    def stage(
        self,
        name: str,
        extra: list[str] = (),
        launch: list[str] | None = None,
        world_size: int = 1,
        seeded: bool = False,
    ):
        """``python -m ppo.train`` as users run it (under ``accelerate launch LAUNCH`` when given); its steps from
        its history.jsonl. ``seeded``: round r runs with seed r."""

        def go(round_: int) -> dict:
            run_dir = self.ws.run_dir(self.case, name, round_)
            args = self.stage_args(run_dir, round_ if seeded else 0, world_size, extra)
            process = self.ws.measure(python_m("ppo.train", args, launch), run_dir)
            rows = read_history(run_dir / "bench" / "ppo" / "history.jsonl")
            return {**history_metrics(rows, self.skip), **learning_figures(rows), **process}

        return go

    def oracle(self, python: str):
        """TRL 1.12's PPOTrainer (bench/baselines/ppo_plain.py) in the oracle venv, through the harness; round r
        runs with seed r. It is TRL's script, so the start model keeps TRL's name, ``--sft_model_path``."""

        def go(round_: int) -> dict:
            run_dir = self.ws.run_dir(self.case, "oracle", round_)
            history = run_dir / "out" / "history.jsonl"
            args = [
                "--prompts_file",
                str(self.ws.demo_dir() / "prompts.jsonl"),
                "--sft_model_path",
                str(self.inputs["sft"]),
                "--reward_model_path",
                str(self.inputs["rm"]),
                "--output_dir",
                str(run_dir / "out"),
                "--history",
                str(history),
                *self.flags(round_),
                *ORACLE_FLAGS,
            ]
            cmd = harness_cmd("bench.baselines.ppo_plain", args, run_dir / "metrics", ppo=True, python=python)
            harness = self.ws.measure(cmd, run_dir, self.skip)
            return {**harness, **learning_figures(read_history(history))}

        return go


def _settings(runner: PPORunner, model: str, reward_model: str = "stand-in: the same with a scalar head") -> dict:
    return run_settings(model, runner.steps, runner.skip, runner.flags(), reward_model=reward_model)


def oracle_python(ws: Workspace) -> tuple[str | None, str | None]:
    """The oracle venv's Python, or why the oracle does not run."""
    if ws.oracle == "skip":
        return None, "the oracle (TRL 1.12 PPOTrainer) was skipped: --oracle skip"
    if ws.oracle == "existing" and not oracle.ready():
        return None, (
            f"the oracle (TRL 1.12 PPOTrainer) was skipped: --oracle existing, and {oracle.ORACLE_DIR} "
            "is not built (python -m bench.oracle builds it)"
        )
    return str(oracle.ensure()), None


def spread(values: list[float]) -> dict[str, float]:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"min": min(values), "max": max(values), "mean": mean, "std": std}


def run_stage_and_oracle(ws: Workspace, result: CaseResult, runner: PPORunner) -> None:
    """Run the stage and, where its venv can be had, TRL's PPOTrainer side by side; compare speed and memory."""
    python, skipped = oracle_python(ws)
    variants = {"stage": runner.stage("stage", seeded=True)}
    if python:
        variants["oracle"] = runner.oracle(python)
    else:
        print(f"  [{result.name}] {skipped}", flush=True)
        result.notes.append(skipped)
    run_rounds(result, variants, **ws.rounds())
    compare(result, Comparison("stage / oracle episodes/s", "episodes_per_s", "stage", "oracle", TARGET_SPEED))
    compare(result, Comparison("stage / oracle peak RSS", "peak_rss_mb", "stage", "oracle", TARGET_MEMORY))


def run(ws: Workspace) -> CaseResult:
    steps, skip = (4, 1) if ws.quick else (10, 1)
    result = CaseResult("ppo", "PPO: project stage vs TRL 1.12 PPOTrainer (the oracle), trained reward model")
    # configs/ppo.yaml's learning rate for the tiny demo model: the policy moves within the few steps measured.
    runner = PPORunner(ws, "ppo", None, steps, skip, learning_rate=1e-4)
    rm_summary = {}
    if runner.inputs["rm_summary"].exists():
        rm_summary = json.loads(runner.inputs["rm_summary"].read_text()).get("metrics", {})
    result.settings = {
        **_settings(
            runner,
            f"SFT of the embedded tiny Llama: {runner.inputs['sft']}",
            f"reward.train on rubric-ranked demo replies: {runner.inputs['rm']}",
        ),
        "rm_eval_gold_accuracy": rm_summary.get("eval_gold_accuracy"),
        "rm_eval_accuracy": rm_summary.get("eval_accuracy"),
        "seeds": "round r: seed r",
        "oracle": {"venv": str(oracle.ORACLE_DIR), **oracle.wanted()},
    }
    run_stage_and_oracle(ws, result, runner)
    for name, label in (("gold_score", "gold score"), ("rm_score", "RM score")):
        key = f"{name}_last_quarter"
        stage = [r[key] for r in result.runs.get("stage", []) if key in r]
        base = [r[key] for r in result.runs.get("oracle", []) if key in r]
        if not base:
            continue
        s = spread(base)
        check_within(
            result,
            f"stage {label}, last quarter (median over seeds) vs oracle's spread",
            statistics.median(stage) if stage else None,
            s["min"],
            s["max"],
            f"min..max over {len(base)} oracle seed(s)",
        )
        result.comparisons[-1]["oracle_mean_2std"] = [s["mean"] - 2 * s["std"], s["mean"] + 2 * s["std"]]
    if ws.out is not None and result.runs:
        png = plot_curves(result, ws.out / f"{ws.stamp or 'ppo'}-ppo-curves.png")
        if png:
            result.notes.append(f"learning curves: {png}")
    result.notes.append(
        "Phases (s/step): the oracle's from the harness (generation = TRL's batch_generation; reference = the "
        "reference forward; value and scoring = get_reward on the value and reward models; optimisation = the rest "
        "of the step), the stage's from its own timing/* in history.jsonl. Scores are not normalised on either side "
        "(reward stats mean 0, std 1). Last quarter = the mean of the last quarter of the steps of a run."
    )
    return result


def run_real(ws: Workspace) -> CaseResult:
    """The stage against the oracle on SmolLM2-135M-Instruct, both fine-tuning it in full: its 49k-vocabulary LM head
    is a large share of every forward, and TRL computes it over the prompt as well as the response. The reward model
    is a stand-in (SmolLM2 with a fresh scalar head): the case measures speed and memory on the same work, and its
    learning curves are not compared."""
    steps, skip = (3, 1) if ws.quick else (5, 1)
    result = CaseResult("ppo_real", "PPO on SmolLM2-135M-Instruct: project stage vs TRL 1.12 PPOTrainer (the oracle)")
    runner = PPORunner(
        ws, "ppo_real", ws.real_model(), steps, skip, batch=8, accumulation=1, response_length=64, learning_rate=1e-5
    )
    result.settings = {
        **_settings(runner, "SmolLM2-135M-Instruct (full fine-tune)"),
        "seeds": "round r: seed r",
        "oracle": {"venv": str(oracle.ORACLE_DIR), **oracle.wanted()},
    }
    run_stage_and_oracle(ws, result, runner)
    for phase in PHASES:
        key = f"{phase}_s_per_step"
        compare(result, Comparison(f"stage / oracle {phase} s/step", key, "stage", "oracle"))
    result.notes.append(
        "Phases (s/step) as in the ppo case. A lower ratio is faster for the phases; the oracle's reference, value "
        "and scoring forwards and its optimisation compute logits over the prompt as well as the response."
    )
    return result


def plot_curves(result: CaseResult, path: Path) -> Path | None:
    """RM score, gold score and KL against episodes, one line per run, the stage and the oracle in two colours."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"stage": "tab:blue", "oracle": "tab:orange"}
    for ax, (name, title) in zip(
        axes,
        (
            ("rm_score", "RM score (objective/scores)"),
            ("gold_score", "gold score (house_style_score)"),
            ("kl", "KL (objective/kl)"),
        ),
        strict=True,
    ):
        for variant, runs in result.runs.items():
            for i, run_ in enumerate(runs):
                curve = run_.get("curve", {})
                points = [
                    (e, v)
                    for e, v in zip(curve.get("episode", []), curve.get(name, []), strict=False)
                    if e is not None and v is not None
                ]
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        color=colours.get(variant, "grey"),
                        alpha=0.8,
                        marker=".",
                        label=variant if i == 0 else None,
                    )
        ax.set_title(title)
        ax.set_xlabel("episodes")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("PPO: the stage against TRL 1.12 PPOTrainer, one line per seed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_lora(ws: Workspace) -> CaseResult:
    """Peak memory of the stage with a full reference model against LoRA, whose reference is the policy with the
    adapter disabled (no second copy). On the 4M-parameter tiny model the Python/torch runtime is nearly all of the
    RSS, so the full run uses a wider random Llama (about 60M parameters) on which the models' own memory shows;
    --quick keeps the tiny model."""
    result = CaseResult(
        "ppo_lora", "PPO: LoRA (adapter-disabled reference, value adapters) vs full fine-tune, peak memory"
    )
    if ws.quick:
        runners = {"tiny": PPORunner(ws, "ppo_lora", ws.model(), 2, 1)}
    else:
        runners = {
            "60m": PPORunner(
                ws,
                "ppo_lora",
                str(random_llama(ws, WIDE, max_positions=1024)),
                2,
                1,
                batch=4,
                accumulation=1,
                response_length=16,
                ppo_epochs=1,
            )
        }
    result.settings = {name: _settings(r, name) for name, r in runners.items()}
    lora = ["--use_lora", "true", "--lora_r", "16", "--lora_alpha", "32"]
    variants = {}
    for name, runner in runners.items():
        variants[f"full_{name}"] = runner.stage(f"full_{name}")
        variants[f"lora_{name}"] = runner.stage(f"lora_{name}", lora)
    run_rounds(result, variants, **ws.rounds())
    for name in runners:
        compare(
            result,
            Comparison(
                f"LoRA / full peak RSS ({name})", "peak_rss_mb", f"lora_{name}", f"full_{name}", TARGET_LORA_MEMORY
            ),
        )
        compare(
            result, Comparison(f"LoRA / full episodes/s ({name})", "episodes_per_s", f"lora_{name}", f"full_{name}")
        )
    result.notes.append(
        "Peak RSS is the whole process: the Python, torch and TRL runtime (roughly 0.6-0.9 GB) is in both sides. "
        "With LoRA the value model gets adapters too (value_lora, the default), its scalar head trained in full."
    )
    return result


def run_zero(ws: Workspace) -> CaseResult:
    """The stage under ``accelerate launch``: one process, and two processes under ZeRO-2 and ZeRO-3 (DeepSpeed's
    CPU accelerator, gloo). Each run uses the whole machine: threads per process = cores / processes. A step is
    per-device batch x accumulation x processes episodes, so two processes do twice the episodes per step."""
    import os

    result = CaseResult("ppo_zero", "PPO stage: 1 process vs 2 processes under ZeRO-2 / ZeRO-3")
    steps, skip = (2, 1) if ws.quick else (3, 1)
    runner = PPORunner(ws, "ppo_zero", ws.model(), steps, skip)
    cores = os.cpu_count() or 2
    # The bench's threads, not the environment's OMP_NUM_THREADS (its programs never inherit it): --threads, or the
    # machine's cores shared out.
    one, two = (ws.threads, ws.threads) if ws.threads else (cores, max(cores // 2, 1))
    result.settings = {**_settings(runner, "embedded:tiny-llama"), "threads_per_process": f"{cores} / processes"}
    variants = {
        "1proc": runner.stage("1proc", launch=accelerate_arguments(1, threads=one)),
        "2proc_zero2": runner.stage("2proc_zero2", launch=accelerate_arguments(2, 2, threads=two), world_size=2),
        "2proc_zero3": runner.stage("2proc_zero3", launch=accelerate_arguments(2, 3, threads=two), world_size=2),
    }
    if ws.quick:  # one of the two: ZeRO-2 starts faster
        variants.pop("2proc_zero3")
    run_rounds(result, variants, **ws.rounds())
    for name in variants:
        if name != "1proc":
            compare(result, Comparison(f"{name} / 1 process episodes/s", "episodes_per_s", name, "1proc"))
            compare(result, Comparison(f"{name} / 1 process peak RSS, all ranks", "peak_tree_rss_mb", name, "1proc"))
    return result
