"""``python -m bench [--cases a,b] [--repeats N] [--quick] [--out DIR]``: run the benchmarks, write the results.

Writes ``<out>/<timestamp>.json`` (every run's figures) and ``<out>/<timestamp>.md`` (the tables), and prints the
tables. See bench/README.md for what each case measures and the targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import active_selection, gpu, labeling, login_flood, ppo, rm, rm_labels, sft
from bench.core import REPO, BenchError, CaseResult, Workspace, markdown

# name -> the function running the case, in the order they run.
CASES = {
    "sft": sft.run,
    "sft_real": sft.run_real,
    "packing": sft.run_packing,
    "rm": rm.run,
    "rm_real": rm.run_real,
    "kway": rm.run_kway,
    "rm_labels": rm_labels.run,
    "active_selection": active_selection.run,
    "ppo": ppo.run,
    "ppo_real": ppo.run_real,
    "ppo_lora": ppo.run_lora,
    "ppo_zero": ppo.run_zero,
    "labeling": labeling.run,
    "labeling_scale": labeling.run_scale,
    "labeling_workers": labeling.run_workers,
    "login_flood": login_flood.run,
    "gpu": gpu.run,
}
# On SmolLM2-135M-Instruct (built from its wheel on first use): about 40 minutes on 2 cores, so `make bench-real`
# runs them and the default run does not.
REAL_MODEL_CASES = ("sft_real", "rm_real", "ppo_real")


def machine(load_before: str) -> dict:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": load_before,
        "load_after": _load(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "gradio", "sqlalchemy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        default=",".join(c for c in CASES if c not in REAL_MODEL_CASES),
        help="Comma-separated cases (default: all but the real model's, "
        + ", ".join(REAL_MODEL_CASES)
        + "): "
        + ", ".join(CASES),
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="Measured rounds per case (default: 3; 1 with --quick)."
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="Warm-up rounds of the first case, discarded (default: 1; 0 with --quick).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="A smoke run: fewer steps, smaller loads (a few minutes)."
    )
    parser.add_argument(
        "--out", default=str(REPO / "bench" / "results"), help="Results folder (default: %(default)s)."
    )
    parser.add_argument("--runs_dir", default=str(REPO / "runs"), help="Cache of the demo data and embedded models.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of every measured program (default: unset, torch uses all cores).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the scratch folder (logs, outputs of every run).")
    parser.add_argument(
        "--oracle",
        choices=("build", "existing", "skip"),
        default="build",
        help="The ppo case's TRL 1.12 oracle venv (bench/.oracle): build it when missing (default), run it only if "
        "it exists already, or skip it.",
    )
    parser.add_argument(
        "--ppo_run",
        default=None,
        help="A run folder (with sft/model and rm/model) for the ppo case, instead of the models it builds once.",
    )
    args = parser.parse_args(argv)

    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")

    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{stamp}-"))
    ws = Workspace(
        Path(args.runs_dir).resolve(),
        work,
        args.quick,
        repeats,
        warmup,
        args.threads,
        args.oracle,
        Path(args.ppo_run).resolve() if args.ppo_run else None,
        out,
        stamp,
    )
    load_before = _load()
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"bench: cases {', '.join(names)}; {repeats} round(s) after {warmup} warm-up; scratch {work}", flush=True)

    results: dict[str, CaseResult] = {}
    t0 = time.perf_counter()
    try:
        for name in names:
            print(f"[{name}] ...", flush=True)
            start = time.perf_counter()
            try:
                result = CASES[name](ws)
            except BenchError as error:
                result = CaseResult(name, name, error=str(error))
                print(f"[{name}] failed: {error}", file=sys.stderr, flush=True)
            except Exception:  # a broken case must not lose the others' figures
                result = CaseResult(name, name, error=traceback.format_exc())
                print(f"[{name}] failed:\n{result.error}", file=sys.stderr, flush=True)
            result.wall_s = time.perf_counter() - start
            if result.skipped:
                print(f"[{name}] skipped: {result.skipped}", flush=True)
            results[name] = result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "wall_s": time.perf_counter() - t0,
        "repeats": repeats,
        "warmup": warmup,
        "quick": args.quick,
        "threads": args.threads,
        "machine": machine(load_before),
        "versions": versions(),
        "cases": {name: r.as_dict() for name, r in results.items()},
    }
    json_path, md_path = out / f"{stamp}.json", out / f"{stamp}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    md_path.write_text(table)
    print("\n" + table)
    print(f"bench: {report['wall_s']:.0f} s; wrote {json_path} and {md_path}")
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
