"""Experiment tracking shared by every stage: W&B by default, trackio or none on request.

W&B runs offline by itself when no API key is configured, so a fresh machine never blocks on a login prompt; the
run is written under ``runs/<run>/wandb`` and can be uploaded later with ``wandb sync``. All stages of one pipeline
run share a W&B group (the run name); each stage is its own W&B run with ``job_type`` set to the stage.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # wandb is imported only when a stage reports to it
    import wandb

DEFAULT_PROJECT = "rlhf-pipeline"


def normalise_report_to(report_to: str | list[str] | None) -> list[str]:
    if report_to is None or report_to == "none" or report_to == ["none"]:
        return []
    values = [report_to] if isinstance(report_to, str) else list(report_to)
    unknown = set(values) - {"wandb", "trackio"}
    if unknown:
        raise ValueError(f"report_to: {sorted(unknown)} is not supported here; use 'wandb', 'trackio' or 'none'.")
    return values


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """One stage's tracking run. Only the main process logs; on the others every method does nothing."""

    def __init__(
        self,
        report_to: str | list[str] | None,
        run: str,
        stage: str,
        run_dir: Path,
        config: dict[str, Any],
        is_main_process: bool = True,
    ):
        self.backends = normalise_report_to(report_to) if is_main_process else []
        self.run, self.stage = run, stage
        self.notes: list[str] = []
        self._wandb: wandb.Run | None = None
        if "wandb" in self.backends:
            self._init_wandb(run_dir, config)
        if "trackio" in self.backends:
            os.environ.setdefault("TRACKIO_DIR", str((run_dir / "trackio").resolve()))

    def _init_wandb(self, run_dir: Path, config: dict[str, Any]) -> None:
        if not os.environ.get("WANDB_MODE") and not wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        # Created before the Trainer so its WandbCallback reuses this run (with our group/job_type) instead of
        # opening its own under the "huggingface" project.
        self._wandb = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            group=self.run,
            job_type=self.stage,
            name=f"{self.run}-{self.stage}",
            config=config,
            dir=str(run_dir.resolve()),  # wandb adds its own "wandb/" folder below this
            reinit="finish_previous",
        )
        if self._wandb.settings.mode == "offline":
            self.notes.append(f"W&B ran offline (no API key); upload the run with `wandb sync {self.wandb_run_dir}`")
        else:
            self.notes.append(f"W&B run: {self._wandb.url}")

    @property
    def wandb_run_dir(self) -> str | None:
        return str(Path(self._wandb.dir).parent) if self._wandb is not None else None

    @property
    def record(self) -> dict[str, Any]:
        """Where the stage was tracked, for its summary.json."""
        return {"wandb_run_dir": self.wandb_run_dir, "report_to": self.backends}

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if "trackio" in self.backends:
            import trackio

            if trackio.context_vars.current_run.get() is not None:
                trackio.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Table(columns=list(columns), data=rows)}, step=step)
        if "trackio" in self.backends:
            import trackio

            if trackio.context_vars.current_run.get() is not None:
                import pandas as pd

                trackio.log({key: trackio.Table(dataframe=pd.DataFrame(rows, columns=columns))}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(metrics)

    def finish(self) -> None:
        """Close the runs, after printing where to find them (the W&B URL, or how to upload an offline run)."""
        for note in self.notes:
            print(note)
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if "trackio" in self.backends:
            import trackio

            if trackio.context_vars.current_run.get() is not None:
                trackio.finish()
