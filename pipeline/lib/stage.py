"""The skeleton every training stage shares: where its run lives, the model it starts from, resume, save, finish.

A stage's command line is three dataclasses composed by ``trl.TrlParser``, as TRL's own scripts compose
``ModelConfig``: ``RunArguments`` and ``ModelArguments`` below, defined once here, and the stage's own config (for
SFT and the reward model, TRL's ``SFTConfig`` / ``RewardConfig`` with the stage's fields added). ``parse`` returns
the three; a stage's ``main(run, model, config)`` then reads top to bottom: ``Stage`` opens ``runs/<run>/<stage>/``
and the tracker, ``latest_checkpoint`` finds where to resume, ``weights_dir`` and ``finish_model`` save, and
``Stage.finish`` writes summary.json and closes the tracker.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from pipeline.lib import runs
from pipeline.lib.errors import MissingInputError, ResumeError
from pipeline.lib.launch import configure_cpu_deepspeed
from pipeline.lib.models import save_here
from pipeline.lib.quiet import quiet_libraries
from pipeline.lib.tracking import Tracker

T = TypeVar("T")


@dataclass
class RunArguments:
    """Where a stage reads and writes: ``<runs_dir>/<run>/<stage>/``, and whether it continues a killed run."""

    run: str = field(default=runs.DEFAULT_RUN, metadata={"help": "Run name: outputs go to <runs_dir>/<run>/<stage>/."})
    runs_dir: str = field(default="runs", metadata={"help": "Root folder of all runs."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint of this run."})


@dataclass
class ModelArguments:
    """The model a stage starts from, and LoRA. The same names and defaults in every stage."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The start model: a local path or a Hugging Face id; default: the run's upstream model."},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = field(default="all-linear", metadata={"help": "'all-linear' or comma-separated names."})
    merge_lora: bool = field(default=True, metadata={"help": "Save the start model with the adapters merged in."})

    def __post_init__(self):
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise ValueError(f"lora_r and lora_alpha must be positive, got {self.lora_r} and {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    def peft_config(self, task_type: str, **extra):
        """A ``peft.LoraConfig`` when ``use_lora``, else None."""
        if not self.use_lora:
            return None
        from peft import LoraConfig

        modules = self.lora_target_modules
        targets = modules if modules == "all-linear" else [t.strip() for t in modules.split(",")]
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            task_type=task_type,
            **extra,
        )


@dataclass
class TrainerDefaults:
    """What a stage on transformers' Trainer (SFT, the reward model) changes of TrainingArguments' defaults, mixed in
    before TRL's config class: ``class SFTStageConfig(TrainerDefaults, SFTConfig)``.

    Its fields narrow or widen the bases' types on purpose (bf16 is None until ``__post_init__`` resolves it), and
    TrainingArguments and TRL already disagree on bf16 and gradient_checkpointing, so each stage config's class line
    tells the type checker so (``type: ignore[misc]``)."""

    # Small models on CPU train faster without activation checkpointing, which TRL turns on by default: unset here,
    # transformers 5 resolves it to off (activation_checkpointing: true turns it on; gradient_checkpointing is its
    # deprecated alias).
    gradient_checkpointing: bool | None = None
    report_to: str | None = field(
        default="wandb", metadata={"help": "wandb (offline without a key), trackio or none."}
    )
    bf16: bool | None = field(default=None, metadata={"help": "Default: on when a GPU with bf16 support is present."})
    # pad_to_multiple_of keeps TRL's "auto": no padding on CPU and CUDA (extra pad tokens only cost compute there),
    # 128 on Neuron, which compiles once per shape.

    def __post_init__(self):
        # bf16 where the GPU has it, and gloo for DeepSpeed on CPU, before TrainingArguments validates them.
        if self.bf16 is None:
            self.bf16 = gpu_has_bf16()
        if configure_cpu_deepspeed():
            self.accelerator_config = {**(self.accelerator_config or {}), "use_configured_state": True}
        check_ranges(self)
        super().__post_init__()


def check_ranges(config) -> None:
    """The numbers torch would only refuse inside train(), after the models are loaded: refused at parse time."""
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}.")
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {config.weight_decay}.")
    if config.max_steps == 0 or config.max_steps < -1 or (config.max_steps == -1 and not config.num_train_epochs > 0):
        raise ValueError(
            f"Train for something: num_train_epochs > 0 (got {config.num_train_epochs}) or max_steps > 0 "
            f"(got {config.max_steps})."
        )


def parse(config_class: type[T], stage: str, argv: list[str] | None = None) -> tuple[RunArguments, ModelArguments, T]:
    """The stage's three configs from ``--config file.yaml`` and command-line flags (flags win over the file)."""
    run, model, config = parse_configs((RunArguments, ModelArguments, config_class), argv)
    fill_run_defaults(run, stage, config)
    return run, model, config


def parse_configs(classes: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """``TrlParser(classes)``, after checking that every key of the ``--config`` YAML is a setting of one of them:
    a typo is named with its file (and the nearest setting), not as an unknown command-line flag. A flag's bad value
    is a ``ValueError`` too, said in one line."""
    from transformers.hf_argparser import DataClassType
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message: str) -> NoReturn:
            # argparse prints the whole usage (137 lines for SFT) above its one line, and exits.
            raise ValueError(flag_problem(message))

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv[:-1]:
        path = Path(argv[argv.index("--config") + 1])
        check_yaml_keys(path, {f.name for cls in classes for f in dataclasses.fields(cls)} | {"env"})
    return Parser([DataClassType(cls) for cls in classes]).parse_args_and_config(argv)


def flag_problem(message: str) -> str:
    """argparse's complaint about a flag as one line: the flag, its bad value, what it takes, and where to look.

    ``argument --learning_rate/--learning-rate: invalid float value: 'abc'`` becomes
    ``--learning_rate: 'abc' is not a number (e.g. 1e-05). --help lists every setting and what it takes.``
    """
    found = re.fullmatch(r"argument (-[^/:\s]+)\S*: (.*)", message, re.S)
    if found:
        flag, problem = found.groups()
        bad_type = re.fullmatch(r"invalid (\w+) value: (.*)", problem, re.S)
        if bad_type:
            expected = {"float": "a number (e.g. 1e-05)", "int": "a whole number"}.get(bad_type[1], "a valid value")
            problem = f"{bad_type[2]} is not {expected}"
        message = f"{flag}: {problem}"
    return f"{message.rstrip('.')}. --help lists every setting and what it takes."


def check_yaml_keys(path: Path, known: set[str]) -> None:
    if not path.is_file():
        raise MissingInputError(
            f"--config: {path} does not exist. Check the path (relative paths are from {Path.cwd()})."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of settings (key: value), got {type(raw).__name__}.")
    unknown = sorted(set(raw) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{path}: unknown setting {', '.join(hints)}. Fix or remove it; --help lists the settings.")


def fill_run_defaults(run: RunArguments, stage: str, config: Any) -> None:
    """Checkpoints under ``runs/<run>/<stage>/checkpoints`` and the tracking run's name, unless set."""
    # TrainingArguments turns an unset output_dir into "trainer_output" while parsing.
    if getattr(config, "output_dir", None) in (None, "trainer_output"):
        config.output_dir = str(runs.stage_dir(run.run, stage, run.runs_dir) / "checkpoints")
    if getattr(config, "run_name", None) is None:
        config.run_name = f"{run.run}-{stage}"


def gpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def recorded_config(*configs: Any) -> dict[str, Any]:
    """The composed configs as one flat mapping: config.yaml, the tracker's config, the resume check."""
    merged: dict[str, Any] = {}
    for config in configs:
        merged |= runs.config_dict(config)
    return merged


def latest_checkpoint(output_dir: str | Path, is_complete: Callable[[Path], bool] | None = None) -> Path:
    """The newest complete ``checkpoint-<step>`` folder of ``output_dir``, for a stage asked to resume.

    ``is_complete`` tells a finished checkpoint from one a kill cut short; by default transformers' Trainer's
    (``trainer_state.json`` is written last).
    """
    is_complete = is_complete or (lambda path: (path / "trainer_state.json").exists())
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and is_complete(p)]
    if not found:
        raise ResumeError(f"resume: no checkpoint in {output_dir}. Run without RESUME=1 to start anew.")
    return max(found, key=lambda p: int(p.name.split("-")[-1]))


def trainer_figures(trainer, train_result, resumed_at: list[int] | None = None) -> dict[str, Any]:
    """What a transformers Trainer run reports for summary.json: loss, speed, steps, over the whole run.

    After a resume, transformers' ``training_loss`` covers only the steps since the resume; the steps before it are
    in the restored log history (each logged ``loss`` is the mean since the log before), so they are added back.
    """
    loss = train_result.training_loss
    if resumed_at:
        start, end = resumed_at[-1], trainer.state.global_step
        logged = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and h["step"] <= start]
        before, previous = 0.0, 0
        for step, value in logged:
            before, previous = before + value * (step - previous), step
        if previous and end > start:
            loss = (before + train_result.training_loss * (end - start)) / (previous + end - start)
    return {
        "train_loss": loss,
        "resumed_at_steps": list(resumed_at or []),
        "train_samples_per_second": train_result.metrics.get("train_samples_per_second"),
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
    }


def weights_dir(stage_dir: Path, model: ModelArguments) -> Path:
    """Where the trained weights are written: the adapters, to merge into the start model, or the model itself."""
    return stage_dir / ("adapter" if model.use_lora and model.merge_lora else "model")


def finish_model(
    stage_dir: Path,
    model: ModelArguments,
    start_model: str | Path,
    tokenizer,
    model_class=None,
    **model_kwargs,
) -> Path:
    """Make ``<stage>/model`` a plain model transformers loads, after ``weights_dir`` was written: the adapters
    merged into the start model (``model_class`` loads it, with ``model_kwargs``) and the start model's tokenizer.

    The main process only (or each node's, without a shared disk). The tokenizer files are the start model's byte for
    byte where it is a local folder: a re-save would record how it was loaded (e.g. offline) and the next stage
    compares tokenizers.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = stage_dir / "model"
    if model.use_lora and model.merge_lora:
        from peft import PeftModel

        base = (model_class or AutoModelForCausalLM).from_pretrained(start_model, dtype=torch.float32, **model_kwargs)
        merged = PeftModel.from_pretrained(base, weights_dir(stage_dir, model)).merge_and_unload()
        if tokenizer.pad_token_id is not None:
            merged.config.pad_token_id = tokenizer.pad_token_id
        save_here(merged, model_dir)
    written = tokenizer.save_pretrained(model_dir)
    if Path(start_model).is_dir():
        for path in map(Path, written):
            if (Path(start_model) / path.name).is_file():
                shutil.copyfile(Path(start_model) / path.name, path)
    return model_dir


class Stage:
    """One stage run: its folder ``runs/<run>/<stage>/``, timer, tracker and summary.json.

    >>> stage = Stage("sft", run.run, run.runs_dir, [run, model, config], config.report_to)
    >>> ...  # train, save
    >>> stage.finish(metrics={...}, inputs={...}, outputs={...}, headline="eval loss 2.1 -> 1.4")
    """

    def __init__(
        self, name: str, run: str, runs_dir: str, configs: list[Any], report_to=None, is_main_process: bool = True
    ):
        quiet_libraries()
        self.name, self.configs, self.is_main_process = name, configs, is_main_process
        self.record = runs.StageRun(name, run, runs_dir)
        self.dir = self.record.dir
        self.timing: dict[str, float] = {}
        self.tracker = Tracker(report_to, run, name, self.dir, recorded_config(*configs), is_main_process)

    def resume_from(self, resume: bool, output_dir: str | Path) -> tuple[Path | None, list[int]]:
        """The checkpoint to continue from (None for a fresh start; a ResumeError when there is none to resume) and
        the steps the run was resumed at so far."""
        checkpoint = latest_checkpoint(output_dir) if resume else None
        return checkpoint, self.resume_points(checkpoint)

    def weights_dir(self, model: ModelArguments) -> Path:
        return weights_dir(self.dir, model)

    def finish_model(self, model: ModelArguments, start_model: str | Path, tokenizer, model_class=None, **kwargs):
        return finish_model(self.dir, model, start_model, tokenizer, model_class, **kwargs)

    def resume_points(self, checkpoint: Path | None) -> list[int]:
        """The steps this stage's run was resumed at, across every resume (``resumed_at.json``); [] when it starts
        anew."""
        path = self.dir / "resumed_at.json"
        if checkpoint is None:
            if self.is_main_process:
                path.unlink(missing_ok=True)
            return []
        points = [*(json.loads(path.read_text()) if path.exists() else []), int(checkpoint.name.split("-")[-1])]
        if self.is_main_process:
            runs.write_json(path, points)
        return points

    @property
    def wall_time_s(self) -> float:
        return self.record.wall_time_s

    @contextmanager
    def timed(self, name: str):
        """Seconds spent in the block, added to ``self.timing[name]`` (a stage's phases in summary.json; a phase run
        several times, as an ensemble's members' training, adds up)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[name] = round(self.timing.get(name, 0.0) + time.perf_counter() - start, 2)

    def finish(
        self,
        metrics: dict[str, Any],
        inputs: Mapping[str, str | Path],
        outputs: Mapping[str, str | Path],
        extra: dict[str, Any] | None = None,
        headline: str = "",
    ) -> dict[str, Any]:
        """summary.json (with the config, the tracking record and the headline, which the conductor shows), the
        tracker's summary, and one line printed: ``[stage] done in 1m05s | <headline> | <the first output>``."""
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.tracker.summary(numbers)
        summary = self.record.finish(
            recorded_config(*self.configs),
            metrics=metrics,
            inputs=inputs,
            outputs=outputs,
            extra={"tracking": self.tracker.record, "headline": headline, **(extra or {})},
        )
        self.tracker.finish()
        first = next((f"{name}: {path}" for name, path in outputs.items()), "")
        took = runs.format_duration(summary["wall_time_s"])
        peak = f"peak memory {summary['peak_memory_mb'] / 1024:.1f} GiB"
        print(" | ".join(part for part in (f"[{self.name}] done in {took}", headline, peak, first) if part))
        return summary
