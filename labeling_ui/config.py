"""The labeling stage's settings: ``LabelingConfig``, read from configs/labeling.yaml by ``load_config``.

The one loader the app, the simulated labelers and other packages (through ``labeling_ui.api``) use, so every reader
gets the same values and the same defaults. What each setting does for labelers is in the README and the YAML itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "labeling.yaml"
# The page has this many response slots, one letter each (A-H): larger items are refused at import.
PAGE_SLOTS = 8
# A lease holds an item for a labeler while the page shows it: the page renews it every quarter of this (30 s), so an
# item of a closed page is free for others within 2 minutes, and one missed renewal (a slow network) loses nothing.
LEASE_SECONDS = 120


@dataclass
class LabelingConfig:
    """configs/labeling.yaml: the guidelines, how items are handed out, where the app listens, simulated labelers."""

    guidelines_version: str = "1"
    guidelines: str = "Rank the responses from 1 (best) to the number of responses (worst)."
    overlap: int = field(default=2, metadata={"help": "Labelers per regular item."})
    gold_rate: float = field(default=0.1, metadata={"help": "Share of each labeler's items that are gold items."})
    max_candidates: int = field(
        default=PAGE_SLOTS, metadata={"help": f"Most responses per item (2..{PAGE_SLOTS}); larger items are refused."}
    )
    lease_seconds: int = field(
        default=LEASE_SECONDS,
        metadata={
            "help": "How long an item stays held for a labeler whose page stopped renewing it (closed, asleep)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Fixes display orders and the simulated labelers' noise."})
    host: str = "127.0.0.1"
    port: int = 7860
    trusted_proxies: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Addresses or networks (CIDR) of the reverse proxies in front of the app: only a request from "
            "one of them may name its client in X-Forwarded-For. Empty: every request is counted as from the "
            "address it connects from (the login throttle counts failures per address)."
        },
    )
    rubric: str | None = field(
        default=None,
        metadata={
            "help": "Simulated labelers' scoring function, module:function(prompt, response) -> float. No default: "
            "the pipeline config names the gold rubric once and passes it with --rubric."
        },
    )
    noise: list[float] = field(
        default_factory=lambda: [0.05, 0.15],
        metadata={"help": "Simulated labelers' noise sigmas, one labeler per level by default."},
    )
    tie_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "Simulated labelers rank replies whose noisy scores are this close as a tie (rubric units)."
        },
    )

    def __post_init__(self):
        self._check_labeling()
        self._check_server()
        self._check_simulation()

    def _check_labeling(self) -> None:
        if not 0 < len(self.guidelines_version) <= 64:
            raise ValueError("guidelines_version must be 1 to 64 characters: it is stored with every ranking.")
        if self.overlap < 1:
            raise ValueError(f"overlap must be at least 1 (labelers per item), got {self.overlap}.")
        if not 0 <= self.gold_rate < 1:
            raise ValueError(f"gold_rate must be in [0, 1), got {self.gold_rate}.")
        if not 2 <= self.max_candidates <= PAGE_SLOTS:
            raise ValueError(
                f"max_candidates must be in 2..{PAGE_SLOTS} (the page has {PAGE_SLOTS} response slots, A-H), "
                f"got {self.max_candidates}."
            )
        if self.lease_seconds < 10:
            raise ValueError(
                f"lease_seconds must be at least 10 (the page renews a lease every quarter of it), got "
                f"{self.lease_seconds}."
            )

    def _check_server(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}.")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or network; write e.g. 127.0.0.1 or 10.0.0.0/8."
                ) from None

    def _check_simulation(self) -> None:
        if self.rubric is not None and self.rubric.count(":") != 1:
            raise ValueError(f"rubric must read module:function, got {self.rubric!r}.")
        if not self.noise or any(sigma < 0 for sigma in self.noise):
            raise ValueError(f"noise must list one or more sigmas >= 0, got {self.noise}.")
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0 (0: only equal scores tie), got {self.tie_tolerance}.")


def load_config(path: str | Path | None = None) -> LabelingConfig:
    """The YAML at ``path`` (default configs/labeling.yaml) as a LabelingConfig; unknown keys are an error."""
    path = Path(path or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"No labeling config at {path}: pass --config configs/labeling.yaml.")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(LabelingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; the keys are: {', '.join(sorted(known))}.")
    return LabelingConfig(**raw)
