"""Resumable PPO checkpoints: ``checkpoints/checkpoint-<step>/``.

``accelerate/`` holds what accelerate saves on every process (the policy and value weights, or their ZeRO shards, the
optimizer, the learning-rate schedule, the KL coefficient and the RNG states); ``meta.json`` (written last, so a
checkpoint without it is incomplete) holds the step and episode counters, the settings the run was started with,
and where it was resumed; ``history.jsonl`` the metrics of every step so far. The prompt order and the sampling
seeds follow from the step number (``ppo.data.PromptOrder``), so nothing else is needed to continue exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.lib import runs
from pipeline.lib.errors import ResumeError
from pipeline.lib.stage import latest_checkpoint, recorded_config

__all__ = ["ResumeError", "latest", "list_checkpoints", "save", "trajectory_settings"]

# Settings that do not change what is computed: a resume may change them.
RESUME_NEUTRAL = {
    "resume",
    "run",
    "runs_dir",
    "report_to",
    "checkpoint_steps",
    "checkpoints_to_keep",
    "num_sample_generations",
    "run_name",
    "logging_steps",
    "output_dir",
    "per_device_eval_batch_size",
    "save_on_each_node",
}


def trajectory_settings(*configs) -> dict[str, Any]:
    """What the run computes with: the composed configs, less what a resume may change."""
    return {k: v for k, v in recorded_config(*configs).items() if k not in RESUME_NEUTRAL}


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (meta.json is written last), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save(accelerator, path: Path, meta: dict[str, Any], history: list[dict], keep: int) -> None:
    """Resuming needs the checkpoints on a disk every node sees: accelerate writes the full weights on the main
    process only."""
    accelerator.save_state(str(path / "accelerate"))  # every process: its shards, the optimizer, RNG
    if accelerator.is_main_process:
        write_history(path / "history.jsonl", history)
        runs.write_json(path / "meta.json", meta)
        for old in list_checkpoints(path.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest(output_dir: str | Path, now: dict[str, Any]) -> tuple[Path, dict[str, Any], list[dict]]:
    """The newest complete checkpoint of the run, after checking it was written with the settings ``now``."""
    path = latest_checkpoint(output_dir, is_complete=lambda p: (p / "meta.json").exists())
    meta = json.loads((path / "meta.json").read_text())
    then = meta["settings"]
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if changed:
        shown = "; ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise ResumeError(
            f"resume: {path} was written with different settings ({shown}). Resume with the settings it was started "
            "with, or run without RESUME=1 to start anew (its checkpoints will be replaced)."
        )
    return path, meta, read_history(path / "history.jsonl")


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_history(path: Path, history: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    tmp.replace(path)


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
