"""Reward model: the project's stage (``reward.train``, pairwise loss) against a plain TRL RewardTrainer script, and
the pairwise expansion against the K-way ranking loss (``bench/bench_kway.py``).

Both programs train the embedded tiny Llama with a scalar head on the same preference pairs, built from the demo SFT
split (a prompt's own reply against another prompt's reply: the content does not matter for throughput), for the same
steps and flags. A reward-model batch of B pairs is 2B sequences; samples/s below counts sequences.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.core import (
    PYTHON,
    TARGET_VS_TRL,
    BenchError,
    CaseResult,
    Comparison,
    Workspace,
    check_target,
    compare,
    harness_cmd,
    run_rounds,
    run_settings,
    trainer_flags,
)


def preference_file(ws: Workspace, pairs: int = 400) -> Path:
    path = ws.work / "rm_inputs" / "preferences.jsonl"
    if path.exists():
        return path
    rows = [json.loads(line) for line in (ws.demo_dir() / "sft_train.jsonl").read_text().splitlines()[: pairs + 1]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row, other in zip(rows, rows[1:], strict=False):
            pair = {
                "prompt": row["prompt"],
                "chosen": row["completion"],
                "rejected": other["completion"],
                "group_id": row["id"],
            }
            fh.write(json.dumps(pair) + "\n")
    return path


def training_flags(steps: int, batch_size: int = 8) -> list[str]:
    """The flags both programs get: everything that decides the work done per step."""
    return trainer_flags(steps, batch_size, max_length=512, learning_rate=2e-4)


def stage_args(run_dir: Path, model: str, preferences: Path, flags: list[str]) -> list[str]:
    """``reward.train`` with configs/rm.yaml on ``model`` and the ``preferences`` file, with TRL's pairwise loss as
    the plain script has it (the stage's K-way loss is bench_kway's subject, case ``kway``)."""
    return [
        "--config",
        "configs/rm.yaml",
        "--run",
        "bench",
        "--runs_dir",
        str(run_dir),
        "--loss",
        "pairwise",
        "--model_name_or_path",
        model,
        "--preferences",
        str(preferences),
        *flags,
    ]


def run(ws: Workspace) -> CaseResult:
    result = CaseResult("rm", "Reward model: project stage (pairwise) vs plain TRL RewardTrainer")
    steps, skip = (6, 2) if ws.quick else (12, 3)
    return versus_plain_trl(ws, result, ws.model(), "embedded:tiny-llama + scalar head", steps, skip)


def run_real(ws: Workspace) -> CaseResult:
    """The same comparison on SmolLM2-135M-Instruct with a scalar head on its tied-embedding trunk, trained in full
    (both sides: the plain script has no LoRA), at half the batch: 4 pairs, 8 sequences of up to 512 tokens."""
    result = CaseResult("rm_real", "Reward model on SmolLM2-135M-Instruct: project stage (pairwise) vs plain TRL")
    steps, skip = (4, 1) if ws.quick else (10, 2)
    model = ws.real_model()
    flags = trainer_flags(steps, 4, max_length=512, learning_rate=2e-5)
    return versus_plain_trl(ws, result, model, "SmolLM2-135M-Instruct + scalar head", steps, skip, flags)


def versus_plain_trl(
    ws: Workspace,
    result: CaseResult,
    model: str,
    model_name: str,
    steps: int,
    skip: int,
    flags: list[str] | None = None,
) -> CaseResult:
    """``reward.train`` (pairwise) against ``bench/baselines/rm_plain.py`` on ``model``, the same pairs and flags."""
    case, data = result.name, preference_file(ws)
    flags = flags or training_flags(steps)
    result.settings = run_settings(model_name, steps, skip, flags, data="400 pairs from the demo SFT split")

    def measured(cmd: list[str], run_dir: Path) -> dict[str, float]:
        metrics = ws.measure(cmd, run_dir, skip)
        return {**metrics, "pairs_per_s": metrics["samples_per_s"] / 2}

    def stage(round_: int) -> dict[str, float]:
        run_dir = ws.run_dir(case, "stage", round_)
        args = stage_args(run_dir, model, data, flags)
        return measured(harness_cmd("reward.train", args, run_dir / "metrics"), run_dir)

    def plain(round_: int) -> dict[str, float]:
        run_dir = ws.run_dir(case, "plain_trl", round_)
        args = ["--model_name_or_path", model, "--train_file", str(data), "--output_dir", str(run_dir / "out"), *flags]
        return measured(harness_cmd("bench.baselines.rm_plain", args, run_dir / "metrics"), run_dir)

    run_rounds(result, {"stage": stage, "plain_trl": plain}, **ws.rounds())
    compare(result, Comparison("stage / plain TRL pairs/s", "pairs_per_s", "stage", "plain_trl", TARGET_VS_TRL))
    compare(result, Comparison("stage / plain TRL tokens/s", "tokens_per_s", "stage", "plain_trl", TARGET_VS_TRL))
    compare(result, Comparison("stage / plain TRL peak RSS", "peak_rss_mb", "stage", "plain_trl"))
    result.notes.append(
        "The stage holds out eval_fraction (10%) of the prompts, so its batches are drawn from the other 90% and "
        "differ a little from the plain script's (tokens per step and padding are in the JSON): tokens/s is the "
        "fairer of the two ratios."
    )
    return result


def run_kway(ws: Workspace) -> CaseResult:
    """``bench/bench_kway.py``'s ``run()``: pairwise expansion against the K-way ranking loss, in a child process
    (so it gets the same threads as every measured program). Its figures are recorded as it returns them; the
    targets are checked on its K=4 ratios."""
    result = CaseResult("kway", "Reward model: K-way ranking loss vs pairwise expansion (bench/bench_kway.py)")
    repeats = 1 if ws.quick else ws.repeats
    code = (
        "import json; from bench.bench_kway import run; "
        f"print(json.dumps(run(repeats={repeats}, runs_dir={str(ws.runs_dir)!r})))"
    )
    run_dir = ws.run_dir("kway", "bench_kway", 0)
    log = run_dir / "log.txt"
    process = ws.measure([PYTHON, "-c", code], run_dir)
    printed = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if not printed:
        raise BenchError(f"bench_kway printed no result (log: {log})")
    figures = json.loads(printed[-1])
    result.settings = {"repeats": repeats, "wall_s": process["wall_s"], "bench_kway": figures}
    result.runs["bench_kway"] = [{"round": 0, **flatten(figures)}]
    for key, op, target in (("forward_pass_ratio", "<=", 0.5), ("time_ratio", "<=", 0.6)):
        value = find_k4(figures, key)
        check_target(result, f"K=4 K-way / pairwise {key.replace('_', ' ')}", value, op, target)
    return result


def flatten(data: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def find_k4(figures: dict, key: str) -> float | None:
    """The value of ``key`` for K=4 in bench_kway's result, wherever it nests it (``{"k4": {...}}``, ``{4: ...}``)."""
    for name, value in flatten(figures).items():
        parts = name.split(".")
        if parts[-1] == key and any(p.lower() in ("4", "k4", "k=4") for p in parts[:-1]):
            return value
    return flatten(figures).get(key)
