"""The run layout: every stage writes into ``runs/<run>/<stage>/``.

Each stage directory holds the stage's outputs, ``config.yaml`` (the fully resolved config) and ``summary.json``
(headline metrics, inputs with their hashes, the git commit, wall time and the paths of what it produced).
A later stage finds its inputs here by default; every input can be overridden by a path in its config.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.lib.errors import MissingInputError

DEFAULT_RUN = "default"
SUMMARY = "summary.json"
CONFIG = "config.yaml"

# What each stage leaves for the next one, and the command that makes it. Used to say what to run first.
STAGE_OUTPUTS = {
    "sft": ("model", "make sft"),
    "candidates": ("candidates.jsonl", "make candidates"),
    "export": ("preferences.jsonl", "make export"),
    "rm": ("model", "make rm"),
    "ppo": ("model", "make ppo"),
    "dpo": ("model", "make dpo"),
}


def stage_dir(run: str, stage: str, runs_dir: str | Path = "runs") -> Path:
    return Path(runs_dir) / run / stage


def stage_output(run: str, stage: str, runs_dir: str | Path = "runs", override: str | None = None) -> Path:
    """Where a stage's product is: ``override`` if given, else the run's own stage output.

    Raises MissingInputError naming the command that produces it, so a user who runs stages out of order
    learns what to run first instead of meeting a stack trace deep inside ``from_pretrained``.
    """
    if override:
        path = Path(override)
        if not path.exists():
            raise MissingInputError(
                f"{path} does not exist. Check the path, or leave it unset to use the run's {stage} output."
            )
        return path
    name, command = STAGE_OUTPUTS[stage]
    path = stage_dir(run, stage, runs_dir) / name
    if not path.exists():
        raise MissingInputError(
            f"No {stage} output for run '{run}' at {path}. Run `{command} RUN={run}` first, or point the config at an existing one."
        )
    return path


ENSEMBLE = "ensemble.json"  # in a reward-model folder: its members' model folders (relative to it)


def reward_models(run: str, runs_dir: str | Path = "runs", override: str | None = None) -> list[Path]:
    """The reward models a stage reads: the run's ``rm/model``, or every member of the run's ensemble
    (``rm/ensemble.json``, written by ``make rm`` with ``ensemble: N``). ``override`` names a model folder, or a
    folder holding an ``ensemble.json``."""
    base = Path(override) if override else stage_dir(run, "rm", runs_dir)
    if (base / ENSEMBLE).is_file():
        members = [base / member for member in json.loads((base / ENSEMBLE).read_text())["members"]]
        missing = [str(m) for m in members if not m.is_dir()]
        if missing:
            raise MissingInputError(
                f"{base / ENSEMBLE} lists members that do not exist: {', '.join(missing)}. Run `make rm RUN={run}` "
                "again (RESUME=1 keeps the members already trained)."
            )
        return members
    return [stage_output(run, "rm", runs_dir, override)]


def require_path(setting: str, path: str | Path | None) -> None:
    """A path a setting names must exist before any work starts; the message names the setting and the path."""
    if path is not None and not Path(path).exists():
        raise MissingInputError(
            f"{setting}: {path} does not exist. Check the path (relative paths are from {Path.cwd()})."
        )


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def fingerprint(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def describe_input(value: str | Path) -> dict[str, str]:
    """An input as recorded in summary.json: a local path with its hash, or a hub id as given."""
    path = Path(value)
    if path.exists():
        return {"path": str(path), "sha256": fingerprint(path)}
    return {"id": str(value)}


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML-able data (enums and paths turned into strings)."""
    if isinstance(config, dict):
        raw = config
    else:
        raw = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    return json.loads(json.dumps(raw, default=str))


def write_config(directory: Path, config: Any) -> Path:
    path = directory / CONFIG
    path.write_text(yaml.safe_dump(config_dict(config), sort_keys=True))
    return path


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_summary(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


class StageRun:
    """Book-keeping of one stage run: its directory, timer and summary.json.

    >>> stage = StageRun("sft", run="default", runs_dir="runs")
    >>> ...  # train, save
    >>> stage.finish(config, metrics={...}, inputs={...}, outputs={...})
    """

    def __init__(self, stage: str, run: str, runs_dir: str | Path = "runs"):
        self.stage, self.run = stage, run
        self.dir = stage_dir(run, stage, runs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started_at = dt.datetime.now(dt.UTC)
        self._t0 = time.perf_counter()

    @property
    def wall_time_s(self) -> float:
        return time.perf_counter() - self._t0

    def finish(
        self,
        config: Any,
        metrics: dict[str, Any],
        inputs: Mapping[str, str | Path],
        outputs: Mapping[str, str | Path],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        summary = {
            "stage": self.stage,
            "run": self.run,
            "status": "completed",
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "wall_time_s": round(self.wall_time_s, 2),
            "peak_memory_mb": peak_memory_mb(),
            "git_commit": git_commit(),
            "metrics": metrics,
            "inputs": {name: describe_input(value) for name, value in inputs.items()},
            "outputs": {name: str(value) for name, value in outputs.items()},
            "config": str(write_config(self.dir, config)),
            **(extra or {}),
        }
        write_json(self.dir / SUMMARY, summary)
        return summary


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB (one process of a multi-process stage)."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 1024, 1)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
