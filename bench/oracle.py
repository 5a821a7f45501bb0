"""The oracle's virtualenv: TRL 1.12, the last release with ``PPOTrainer``, at ``bench/.oracle/``.

    python -m bench.oracle            # create it (or check it), print its Python

The project itself runs a newer TRL without PPOTrainer, so the PPO case runs TRL 1.12's PPO (the oracle) in a
virtualenv of its own, created here once: torch first (the CPU build pip finds here; an unpinned torch would pull
a CUDA build of several GB), then the pins below. The project is not installed into it: its modules (the harness,
the baseline, the demo rubric) are reached through PYTHONPATH, as for every measured program.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.core import REPO, BenchError

ORACLE_DIR = REPO / "bench" / ".oracle"
MARKER = ORACLE_DIR / "oracle-pins.json"  # written last: a venv without it is half-built and made again
TORCH = "torch==2.13.0"
# What bench/harness.py and bench/baselines/ppo_plain.py import, at the versions the TRL 1.12 figures were taken.
PINS = ("trl==1.12.0", "transformers==5.24.0", "accelerate==1.15.0", "datasets", "peft==0.21.2", "psutil")


def python() -> Path:
    return ORACLE_DIR / "bin" / "python"


def wanted() -> dict[str, object]:
    return {"python": "3.11", "torch": TORCH, "pins": list(PINS)}


def ready() -> bool:
    """Whether the venv exists and was built from the current pins."""
    try:
        return python().exists() and json.loads(MARKER.read_text()) == wanted()
    except (OSError, ValueError):
        return False


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        raise BenchError("the oracle venv needs Python 3.11 (python3.11 on PATH)")
    return found


def _run(cmd: list[str], log) -> None:
    """Run ``cmd``, echoing pip's main lines ("Collecting", "Installing", ...) as progress, all of it to ``log``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    tail: list[str] = []
    for line in proc.stdout:
        log.write(line)
        tail = [*tail[-40:], line]
        if line.startswith(("Collecting", "Installing collected", "Successfully installed", "ERROR")):
            print(f"  [oracle] {line.rstrip()[:150]}", flush=True)
    if proc.wait() != 0:
        raise BenchError(f"{' '.join(cmd)} failed (exit code {proc.returncode}):\n{''.join(tail)}")


def ensure() -> Path:
    """The oracle's Python, creating the venv first when it is missing or was built from other pins."""
    if ready():
        return python()
    start = time.perf_counter()
    print(
        f"bench: creating the TRL 1.12 oracle venv in {ORACLE_DIR.relative_to(REPO)}/ (once; about 1.7 GB, a few "
        f"minutes): {TORCH}, then {' '.join(PINS)}",
        flush=True,
    )
    shutil.rmtree(ORACLE_DIR, ignore_errors=True)
    ORACLE_DIR.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_python311(), "-m", "venv", str(ORACLE_DIR)], check=True)
    pip = [str(python()), "-m", "pip", "install", "--progress-bar", "off"]
    with open(ORACLE_DIR / "install.log", "w") as log:
        _run([*pip, TORCH], log)
        _run([*pip, TORCH, *PINS], log)  # torch named again so nothing moves it
        _run(
            [
                str(python()),
                "-c",
                "import torch, trl; from trl.experimental.ppo import PPOTrainer; "
                "print('torch', torch.__version__, 'trl', trl.__version__)",
            ],
            log,
        )
    MARKER.write_text(json.dumps(wanted()))
    print(f"bench: oracle venv ready ({time.perf_counter() - start:.0f} s)", flush=True)
    return python()


if __name__ == "__main__":
    print(ensure())
