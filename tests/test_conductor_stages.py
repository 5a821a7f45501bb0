"""The stage list (pipeline/conductor/stages.py) is the only one: every module it names runs, the conductor's config,
its commands and its report take their stages from it, and the Makefile's stage targets and help say what it says."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from pipeline.conductor.config import OPTIONAL, ROUND_STAGES, STAGES, UPSTREAM, PipelineConfig
from pipeline.conductor.orchestrate import stage_command
from pipeline.conductor.report import stage_rows
from pipeline.conductor.stages import BY_NAME, REGISTRY
from pipeline.lib import runs
from tests.conftest import REPO


def makefile_targets() -> dict[str, tuple[list[str], str, list[str]]]:
    """target -> (prerequisites, help line, recipe lines), from the Makefile's text."""
    targets, current = {}, None
    for line in (REPO / "Makefile").read_text().splitlines():
        rule = re.match(r"^([a-z][a-z-]*):(?!=)\s*([^#]*?)\s*(?:##\s*(.*))?$", line)
        if rule:
            current = rule.group(1)
            targets[current] = (rule.group(2).split(), rule.group(3) or "", [])
        elif line.startswith("\t") and current:
            targets[current][2].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


@pytest.mark.parametrize("stage", REGISTRY, ids=lambda s: s.name)
def test_every_stage_module_imports_and_runs_as_a_script(stage):
    module = importlib.import_module(stage.module)
    if hasattr(module, "__path__"):  # a package runs through its __main__
        assert importlib.util.find_spec(f"{stage.module}.__main__") is not None, stage.module
    else:
        assert 'if __name__ == "__main__":' in Path(module.__file__).read_text(), stage.module
    assert stage.launch in ("accelerate", "python"), stage.launch


def test_the_conductor_takes_its_stages_from_the_registry():
    names = [stage.name for stage in REGISTRY]
    assert list(STAGES) == names and len(set(names)) == len(names)
    assert list(ROUND_STAGES) == names[1:]
    assert list(OPTIONAL) == ["dpo"]
    assert UPSTREAM == {stage.name: stage.upstream for stage in REGISTRY}
    for stage in REGISTRY:  # a stage reads only what an earlier stage wrote
        assert all(names.index(up) < names.index(stage.name) for up in stage.upstream), stage.name
    config = PipelineConfig()
    for stage in REGISTRY:
        command = stage_command(config, stage.name)
        assert command[-2:] == ["-m", stage.module], stage.name
        launched = command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
        assert launched == (stage.launch == "accelerate"), stage.name


def test_the_report_lists_the_stages_of_every_round_in_registry_order(tmp_path):
    config = PipelineConfig(run="r", runs_dir=str(tmp_path), rounds=2)
    summary = {"status": "finished", "wall_time_s": 1.0, "started_at": "2026-01-01 00:00:00"}
    expected = []
    for r, names in ((1, STAGES), (2, ROUND_STAGES)):
        for name in names:
            for directory in BY_NAME[name].directories:
                folder = tmp_path / ("r" if r == 1 else "r/round2") / directory
                folder.mkdir(parents=True)
                runs.write_json(folder / runs.SUMMARY, summary)
                expected.append(directory if r == 1 else f"{directory} (round 2)")
    rows = [row[0] for row in stage_rows(config)]
    assert rows == expected
    # The labeling stage's selection (runs/<run>/selection/) has its row where the stage list has labeling.
    assert rows[:5] == ["sft", "candidates", "labeling", "selection", "export"]
    assert rows[len(STAGES) + 1 :][:3] == ["candidates (round 2)", "labeling (round 2)", "selection (round 2)"]


def test_each_stage_target_of_the_makefile_runs_the_registry_module_and_says_its_description():
    targets = makefile_targets()
    phony = next(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith(".PHONY:")).split()
    for stage in REGISTRY:
        assert stage.make_target in targets and stage.make_target in phony, stage.make_target
        _, help_line, recipe = targets[stage.make_target]
        assert help_line == stage.description, stage.name
        runner = "$(LAUNCH)" if stage.launch == "accelerate" else "$(PY)"
        assert recipe and all(line.startswith(f"{runner} -m {stage.module} ") for line in recipe), (stage.name, recipe)


def test_the_candidates_become_items_in_the_labeling_stage_in_the_makefile_too():
    targets = makefile_targets()
    assert all("labeling_ui" not in line for line in targets[BY_NAME["candidates"].make_target][2])
    _, _, recipe = targets["import-candidates"]
    assert [line.split()[:4] for line in recipe] == [["$(PY)", "-m", BY_NAME["labeling"].module, "import-candidates"]]


def test_make_help_lists_every_stage_target():
    shown = [
        line.split(":")[0]
        for line in (REPO / "Makefile").read_text().splitlines()
        if re.match(r"^[a-z-]+:.*## ", line)
    ]
    assert [stage.make_target for stage in REGISTRY] == [t for t in shown if t in {s.make_target for s in REGISTRY}]


def test_a_missing_input_names_the_make_target_of_the_stage_that_writes_it():
    for stage, (_, command) in runs.STAGE_OUTPUTS.items():
        assert command == f"make {BY_NAME[stage].make_target}", stage
