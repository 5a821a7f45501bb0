"""The house plan holds: the import-linter contracts in pyproject.toml, no private names across packages, no stage
that branches on the demo, and a formatter that owns the layout."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("pipeline", "labeling_ui", "reward", "ppo", "dpo", "evaluation")


def project_modules() -> dict[str, ast.Module]:
    """module name -> parsed source, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def python_files(root: Path) -> list[Path]:
    """The tree's Python files, without hidden folders (virtualenvs, .git) and runs/."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("runs", "wandb", "__pycache__")]
        found += [Path(folder) / name for name in names if name.endswith(".py")]
    return found


def test_the_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    command = [str(lint_imports)] if lint_imports.exists() else [shutil.which("lint-imports") or "lint-imports"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" not in proc.stdout.split("Contracts:")[-1].split("\n")[0].replace("0 broken", "")


def test_no_private_name_is_imported_from_another_package():
    found = []
    for name, tree in project_modules().items():
        top = name.split(".")[0] if not name.startswith("pipeline.") else ".".join(name.split(".")[:2])
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                source = node.module.split(".")[0]
                source = ".".join(node.module.split(".")[:2]) if source == "pipeline" else source
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private and source != top:
                    found.append(f"{name}: from {node.module} import {', '.join(private)}")
    assert not found, found


def test_no_module_outside_the_demo_branches_on_the_demo():
    found = []
    for name, tree in project_modules().items():
        if name.startswith("pipeline.demo"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value == "demo" for o in operands):
                    found.append(f"{name}:{node.lineno}")
    assert not found, found


def test_the_formatter_owns_the_layout():
    files = [p for p in python_files(REPO)]
    skips = [
        f"{p.relative_to(REPO)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "fmt: skip" in line
    ]
    assert len(skips) <= 10, skips
    noqa_e402 = [p for p in files if p.read_text().count("noqa: E402") > 1]
    assert not noqa_e402, noqa_e402
