"""Resumable PPO checkpoints: ``checkpoints/checkpoint-<step>/``; and the policy snapshots: ``snapshots/``.

``accelerate/`` holds what accelerate saves on every process (the policy and value weights, or their ZeRO shards, the
optimizer, the learning-rate schedule, the KL coefficient and the RNG states); ``meta.json`` (written last, so a
checkpoint without it is incomplete) holds the step and episode counters, the settings the run was started with,
and where it was resumed; ``history.jsonl`` the metrics of every step so far. The prompt order and the sampling
seeds follow from the step number (``ppo.data.PromptOrder``), so nothing else is needed to continue exactly.

A snapshot is the policy alone at one step, ``snapshots/step_<N>/model/`` (saved as ``model/`` is), for the
evaluation to place the run's course on its score-against-KL plot. ``snapshots/index.json`` lists them with their
step and episode, and gains ``final`` (the last step and episode) when the run ends: snapshots without it belong to
a run that has not finished.
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
from pipeline.lib.tables import read_jsonl, write_jsonl

__all__ = [
    "ResumeError",
    "add_snapshot",
    "close_snapshots",
    "keep_snapshots",
    "latest",
    "list_checkpoints",
    "read_snapshots",
    "save",
    "snapshot_dir",
    "snapshot_steps",
    "trajectory_settings",
]

SNAPSHOT_INDEX = "index.json"

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
    "snapshots",
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
        write_jsonl(path / "history.jsonl", history)
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
    return path, meta, read_jsonl(path / "history.jsonl")


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def snapshot_steps(num_steps: int, count: int) -> list[int]:
    """The steps after which a snapshot of the policy is saved: ``count`` evenly spaced steps before the last, so that
    with the final policy they cut the run into equal parts (20 steps, 4 snapshots: 4, 8, 12, 16). Fewer on a run
    with fewer steps: at most one per step."""
    return sorted({round(i * num_steps / (count + 1)) for i in range(1, count + 1)} - {0, num_steps})


def read_snapshots(directory: str | Path) -> dict[str, Any]:
    """``snapshots/index.json``: ``{"snapshots": [{"step", "episode", "path"}], "final": {"step", "episode"}}``, the
    paths relative to the folder; no snapshots when there is no index."""
    path = Path(directory) / SNAPSHOT_INDEX
    return json.loads(path.read_text()) if path.exists() else {"snapshots": []}


def keep_snapshots(directory: Path, step: int) -> list[dict[str, Any]]:
    """The snapshots a run that starts at ``step`` keeps: on resume those up to its checkpoint (a kill may have left
    later ones, which the run writes again), on a fresh start none. The others' folders are removed, and the index
    loses its ``final`` until the run ends again."""
    if not directory.is_dir():
        return []
    kept = [s for s in read_snapshots(directory)["snapshots"] if s["step"] <= step]
    names = {Path(s["path"]).parts[0] for s in kept}
    for folder in directory.glob("step_*"):
        if folder.name not in names:
            shutil.rmtree(folder, ignore_errors=True)
    runs.write_json(directory / SNAPSHOT_INDEX, {"snapshots": kept})
    return kept


def snapshot_dir(directory: Path, step: int) -> Path:
    return directory / f"step_{step}"


def add_snapshot(directory: Path, written: list[dict[str, Any]], step: int, episode: int) -> list[dict[str, Any]]:
    """The index with the snapshot of ``step`` (written, in ``step_<step>/model``), listed once, by step."""
    entry = {"step": step, "episode": episode, "path": f"{snapshot_dir(directory, step).name}/model"}
    entries = sorted([*(s for s in written if s["step"] != step), entry], key=lambda s: s["step"])
    runs.write_json(directory / SNAPSHOT_INDEX, {"snapshots": entries})
    return entries


def close_snapshots(directory: Path, written: list[dict[str, Any]], step: int, episode: int) -> None:
    """The index of a finished run: its snapshots, and the step and episode of its final policy."""
    if written:
        runs.write_json(
            directory / SNAPSHOT_INDEX, {"snapshots": written, "final": {"step": step, "episode": episode}}
        )
