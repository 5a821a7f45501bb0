"""SFT: the project's stage (``pipeline.sft``) against a plain TRL script, and packing against no packing.

Both programs get the same model (the embedded tiny Llama), data (the demo SFT split), steps and training flags;
evaluation, checkpoints, samples and tracking are off, since the plain script does none of them. Throughput is the
steady state after the first steps (see ``core.training_metrics``); memory is the peak RSS of the whole process.
"""

from __future__ import annotations

from pathlib import Path

from bench.core import (
    TARGET_VS_TRL,
    CaseResult,
    Comparison,
    Workspace,
    as_flags,
    compare,
    harness_cmd,
    run_rounds,
    run_settings,
    trainer_flags,
)
from pipeline.lib.launch import accelerate_arguments

TARGET_PACKING = (">=", 1.3)
# What the plain script does not do, turned off in the stage: evaluation at the start, the best model at the end,
# early stopping and the greedy samples (configs/sft.yaml has them on).
STAGE_EXTRAS_OFF = as_flags(
    {"eval_on_start": "false", "load_best_model_at_end": "false", "early_stopping_patience": 0, "num_samples": 0}
)


def training_flags(steps: int, batch_size: int = 8, max_length: int = 384, bf16: bool = False) -> list[str]:
    """The flags both programs get: everything that decides the work done per step."""
    return trainer_flags(steps, batch_size, max_length, 1e-3, bf16, completion_only_loss="true")


def demo_inputs(ws: Workspace, model: str | None = None) -> list[str]:
    """The stage's inputs as configs/sft.yaml names them, in the bench's runs dir: the start model (default: the
    embedded tiny Llama) and the demo's SFT splits."""
    demo = ws.demo_dir()
    return [
        "--model_name_or_path",
        str(model or ws.model()),
        "--dataset",
        str(demo / "sft_train.jsonl"),
        "--eval_dataset",
        str(demo / "sft_eval.jsonl"),
    ]


def stage_args(ws: Workspace, run_dir: Path, flags: list[str], model: str | None = None) -> list[str]:
    """``pipeline.sft`` as ``make sft`` runs it, minus what the plain script does not do (eval, samples, saves)."""
    return [
        "--config",
        "configs/sft.yaml",
        "--run",
        "bench",
        "--runs_dir",
        str(run_dir),
        *demo_inputs(ws, model),
        *STAGE_EXTRAS_OFF,
        *flags,
    ]


def run(ws: Workspace) -> CaseResult:
    # 35 measured steps (about 9 s at 2 cores): shorter windows let a second of noise decide a 5% ratio.
    steps, skip = (6, 2) if ws.quick else (40, 5)
    result = CaseResult("sft", "SFT: project stage vs plain TRL SFTTrainer")
    return versus_plain_trl(ws, result, ws.model(), "embedded:tiny-llama", training_flags(steps), steps, skip)


def run_real(ws: Workspace) -> CaseResult:
    """The same comparison on SmolLM2-135M-Instruct (configs/smollm2/sft.yaml's learning rate and batch): a 49k
    vocabulary, 30 layers, tied embeddings. A step takes seconds, not tens of milliseconds, so fewer steps measure
    as long a window."""
    steps, skip = (4, 1) if ws.quick else (12, 2)
    result = CaseResult("sft_real", "SFT on SmolLM2-135M-Instruct: project stage vs plain TRL SFTTrainer")
    flags = trainer_flags(steps, 8, 384, 5e-5, completion_only_loss="true")
    return versus_plain_trl(ws, result, ws.real_model(), "SmolLM2-135M-Instruct", flags, steps, skip, launch=False)


def versus_plain_trl(
    ws: Workspace,
    result: CaseResult,
    model: str,
    model_name: str,
    flags: list[str],
    steps: int,
    skip: int,
    launch: bool = True,
) -> CaseResult:
    """``pipeline.sft`` against ``bench/baselines/sft_plain.py`` on ``model`` with the same ``flags``; with
    ``launch``, also the stage as ``make sft`` launches it."""
    case, demo = result.name, ws.demo_dir()
    result.settings = run_settings(
        model_name, steps, skip, flags, data="demo sft_train", threads="torch default (all cores)"
    )

    def stage(round_: int, launch: list[str] | None = None, name: str = "stage") -> dict[str, float]:
        run_dir = ws.run_dir(case, name, round_)
        cmd = harness_cmd("pipeline.sft", stage_args(ws, run_dir, flags, model), run_dir / "metrics", launch=launch)
        return ws.measure(cmd, run_dir, skip)

    def plain(round_: int) -> dict[str, float]:
        run_dir = ws.run_dir(case, "plain", round_)
        args = [
            "--model_name_or_path",
            model,
            "--train_file",
            str(demo / "sft_train.jsonl"),
            "--output_dir",
            str(run_dir / "out"),
            *flags,
        ]
        return ws.measure(harness_cmd("bench.baselines.sft_plain", args, run_dir / "metrics"), run_dir, skip)

    variants = {"stage": stage, "plain_trl": plain}
    if ws.threads:
        result.notes.append("`make sft` launch not compared: --threads fixes the threads of every program.")
    elif launch and not ws.quick:
        # What `make sft` runs: accelerate launch by the project's launch rules, configs/accelerate/single.yaml and
        # the machine's cores as threads (accelerate alone would give the process one thread).
        arguments = accelerate_arguments(1)
        variants["stage_make_launch"] = lambda r: stage(r, arguments, "stage_make_launch")
    run_rounds(result, variants, **ws.rounds())
    compare(result, Comparison("stage / plain TRL samples/s", "samples_per_s", "stage", "plain_trl", TARGET_VS_TRL))
    compare(result, Comparison("stage / plain TRL tokens/s", "tokens_per_s", "stage", "plain_trl", TARGET_VS_TRL))
    compare(result, Comparison("stage / plain TRL peak RSS", "peak_rss_mb", "stage", "plain_trl"))
    if "stage_make_launch" in variants:
        compare(
            result,
            Comparison("`make sft` launch / python -m samples/s", "samples_per_s", "stage_make_launch", "stage"),
        )
    return result


def run_packing(ws: Workspace) -> CaseResult:
    """The stage with ``packing: true`` (TRL's default BFD strategy) against ``packing: false``, at the batch size of
    ``configs/sft.yaml`` (16).

    BFD packing is padding-free. With FlashAttention TRL flattens a packed batch into one row; without it (CPU, SDPA)
    the stage keeps the packed rows as rows (``pipeline.sft.PackedRowsCollator``), and transformers builds each row a
    block-diagonal causal mask from the position ids, so examples do not see each other.
    """
    steps, skip = (6, 2) if ws.quick else (8, 2)
    result = CaseResult("packing", "SFT: packing (BFD, padding-free) vs no packing, project stage")
    ws.model()
    flags = training_flags(steps, batch_size=16)
    result.settings = run_settings("embedded:tiny-llama", steps, skip, flags)

    def variant(name: str, extra: list[str]):
        def go(round_: int) -> dict[str, float]:
            run_dir = ws.run_dir("packing", name, round_)
            cmd = harness_cmd("pipeline.sft", stage_args(ws, run_dir, [*flags, *extra]), run_dir / "metrics")
            return ws.measure(cmd, run_dir, skip)

        return go

    packing = ["--packing", "true", "--packing_strategy", "bfd"]
    variants = {"no_packing": variant("no_packing", ["--packing", "false"])}
    if not ws.quick:  # the same batch size: 16 rows of 384 tokens
        variants["packing_bfd"] = variant("packing_bfd", packing)
    # 6 packed rows of 384 tokens hold about as many examples as 16 unpacked ones (about 140 tokens each).
    variants["packing_bfd_bs6"] = variant("packing_bfd_bs6", [*packing, "--per_device_train_batch_size", "6"])
    run_rounds(result, variants, **ws.rounds())
    # samples/s counts examples: rows without packing, position-id restarts with it (each example starts at 0).
    for name in variants:
        if name != "no_packing":
            compare(
                result,
                Comparison(f"{name} / no packing samples/s", "samples_per_s", name, "no_packing", TARGET_PACKING),
            )
            compare(result, Comparison(f"{name} / no packing tokens/s", "tokens_per_s", name, "no_packing"))
    result.notes.append(
        "Examples per step differ: a packed batch holds per_device_train_batch_size rows of max_length tokens "
        "(several examples each), so samples/s (examples per second) is the fair measure, not steps. packing_bfd keeps "
        "the batch size (16 rows); packing_bfd_bs6 takes about the examples per step of no packing."
    )
    return result
