"""``python -m pipeline.demo [--runs_dir runs]``: build the demo's data and models (once; seconds when cached)."""

from __future__ import annotations

import argparse

from pipeline.demo.base_model import resolve_model
from pipeline.demo.data import ensure_demo_data
from pipeline.lib.quiet import quiet_libraries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__)
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--models", nargs="*", default=["tiny-llama"], help="embedded presets to build")
    args = parser.parse_args(argv)
    quiet_libraries()
    print(f"demo data: {ensure_demo_data(args.runs_dir)}")
    for preset in args.models:
        print(f"demo model {preset}: {resolve_model('embedded:' + preset, args.runs_dir)}")


if __name__ == "__main__":
    main()
