"""Errors a user can act on: one block that says what is wrong, where and what to do, and an exit status per kind.

Every stage's ``__main__`` and the conductor run through ``run``. An error the project expects (a bad setting, a
missing input, bad data, a resume that cannot continue, out of memory) prints one block on the main process and
exits with its status, without a traceback; anything else is a bug and keeps its traceback. ``RLHF_DEBUG=1`` (or
``--debug`` on the command line) shows the traceback of every error. The README's "When something goes wrong"
lists the statuses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

# Exit statuses, in the README. 3 is the conductor's "waiting for labels".
BAD_SETTING, MISSING_INPUT, BAD_DATA, CANNOT_RESUME, OUT_OF_MEMORY = 2, 4, 5, 6, 7
ERROR_FILE = "RLHF_ERROR_FILE"  # set by the launcher: where the main process leaves its message for it to repeat


class MissingInputError(FileNotFoundError):
    """An input a stage needs does not exist; the message says which stage produces it."""


class DataError(ValueError):
    """A data file cannot be used as it is; the message names the file, the row(s) and what to change."""


class ResumeError(RuntimeError):
    """A resume that cannot continue the run: no checkpoint, or one written with other settings."""


class OutOfMemory(RuntimeError):
    """The accelerator (or the machine) ran out of memory; the message says what uses less."""


def classify(error: BaseException) -> tuple[int, str] | None:
    """(exit status, what kind of problem) for an error the project expects; None for a bug."""
    torch = sys.modules.get("torch")  # never imported here: labeling's commands run without torch
    memory = (OutOfMemory, MemoryError) + ((torch.OutOfMemoryError,) if torch is not None else ())
    if isinstance(error, memory):
        return OUT_OF_MEMORY, "out of memory"
    if isinstance(error, DataError):
        return BAD_DATA, "bad data"
    if isinstance(error, MissingInputError | FileNotFoundError):
        return MISSING_INPUT, "missing input"
    if isinstance(error, ResumeError):
        return CANNOT_RESUME, "cannot resume"
    if isinstance(error, ValueError):  # what the configs' checks raise
        return BAD_SETTING, "bad setting"
    return None


def debugging() -> bool:
    return os.environ.get("RLHF_DEBUG", "").lower() in ("1", "true", "yes") or "--debug" in sys.argv


def is_main_process() -> bool:
    """Rank 0 of a launched job (every process raises the same error; one prints it)."""
    return os.environ.get("RANK", "0") == "0"


def message_block(error: BaseException, kind: str, status: int) -> str:
    return f"\nerror ({kind}): {error}\n(exit status {status}; RLHF_DEBUG=1 shows the traceback)\n"


def run(main: Callable[[], object]) -> int:
    """Run ``main`` and turn an expected error into its message and exit status; returns 0 on success."""
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ["RLHF_DEBUG"] = "1"
    try:
        main()
        return 0
    except (Exception, MemoryError) as error:
        known = classify(error)
        if known is None or debugging():
            raise
        status, kind = known
        block = message_block(error, kind, status)
        if os.environ.get(ERROR_FILE):
            # The launcher prints it last, below accelerate's and torchrun's own lines. The first process to fail
            # writes it: torchrun stops the others as soon as one exits, rank 0 included.
            try:
                with open(os.environ[ERROR_FILE], "x") as fh:
                    fh.write(f"{status}\n{block}")
            except FileExistsError:
                pass
        elif is_main_process():
            print(block, file=sys.stderr, flush=True)
        return status


def relay(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run a launched stage and, when it fails with an expected error, print its message last and return its
    status (accelerate and torchrun report a failed process with tracebacks of their own, which bury it)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlhf-error-") as tmp:
        error_file = Path(tmp) / "error.txt"
        status = subprocess.run(command, env={**(env or os.environ), ERROR_FILE: str(error_file)}).returncode
        if status and error_file.exists():
            code, block = error_file.read_text().split("\n", 1)
            print(block, file=sys.stderr, flush=True)
            return int(code)
    return status


def exit_with(main: Callable[[], object]) -> None:
    """``run`` for a ``__main__`` block: exits with the status."""
    sys.exit(run(main))
