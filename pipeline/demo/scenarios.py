"""The kinds of customer e-mail the demo holds (``scenarios.yaml``): how customers write each, and what every reply
to it must contain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Scenario:
    """One kind of customer e-mail: how customers write it and what every reply to it must contain."""

    name: str
    problem: bool  # the customer reports something that went wrong: the house style apologises once
    cue: str  # regex recognising the scenario in a subject line (tried in SCENARIOS order)
    next_step: str  # regex the reply must match: the concrete next step
    subjects: tuple[str, ...]
    bodies: tuple[str, ...]
    apologies: tuple[str, ...]  # one-sentence apologies, empty unless `problem`
    steps: tuple[str, ...]  # the next step as the house writes it; each matches `next_step`
    terse: tuple[str, ...]  # the next step as a one-liner; each matches `next_step`
    extras: tuple[str, ...]  # a friendly closing sentence


SCENARIOS_FILE = Path(__file__).with_name("scenarios.yaml")


def load_scenarios(path: Path = SCENARIOS_FILE) -> tuple[Scenario, ...]:
    """The scenarios of ``scenarios.yaml``, in its order (the order the cues are tried in)."""
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))
    fields: list[dict[str, Any]] = [
        {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows
    ]
    return tuple(Scenario(**row) for row in fields)


SCENARIOS = load_scenarios()
SCENARIO_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
