"""The whole pipeline as one command: ``python -m pipeline run --config configs/pipeline.yaml`` (``make demo``; ``make pipeline PIPELINE_CONFIG=...`` for your own).

Stages, in the order of ``stages.REGISTRY``: sft, candidates, labeling, export, rm, ppo, dpo (when named), eval; then
the report. Each stage runs as its own process (through ``accelerate launch`` where it trains), exactly as its ``make``
target would run it, so a crash in one stage leaves the pipeline, and every earlier output, intact.

A stage is skipped when nothing it depends on changed since its last successful run: its config file, its overrides,
the inputs recorded in its ``summary.json`` (by hash), and the runs of the stages before it. When one of them
changed, the stage runs again, and so does everything downstream (a stage's key includes its upstream stages' keys).
The key of a finished stage is kept in ``runs/<run>/<stage>/pipeline.json``; it is removed before the stage starts,
so a stage that crashed is never mistaken for a finished one.

Rounds (``rounds: N``): round 1 writes ``runs/<run>/<stage>/``, round r writes ``runs/<run>/round<r>/<stage>/``.
Round r samples new candidates from round r-1's PPO policy, labels them in the same database, exports every label so
far, retrains the reward model from the SFT model, and runs PPO again from the SFT policy (the reference stays the
SFT model, so the KL of every round is measured against the same distribution).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeling_ui import api as labeling
from pipeline.conductor.config import ROUND_STAGES, STAGES, UPSTREAM, PipelineConfig, round_run, stage_dir
from pipeline.conductor.report import write_report
from pipeline.conductor.stages import BY_NAME
from pipeline.lib import errors, launch, runs

SCORED = ("rm", "ppo", "eval")  # stages given the gold rubric, besides labeling
STATE = "pipeline.json"
NEEDS_LABELS = 3  # exit status: the human labeling stage is waiting for labels


class StageFailed(RuntimeError):
    pass


@dataclass
class Step:
    stage: str
    round: int
    commands: list[list[str]]
    config_file: str | None
    extra_key: Any = None  # anything else whose change must re-run the stage

    @property
    def name(self) -> str:
        return self.stage if self.round == 1 else f"{self.stage} (round {self.round})"


def db_url(config: PipelineConfig) -> str:
    return config.db or labeling.default_db_url(config.run, config.runs_dir)


def stage_command(config: PipelineConfig, stage: str) -> list[str]:
    """How a stage starts: the training stages under ``accelerate launch`` (the launch rules), the others plainly."""
    module, how = BY_NAME[stage].module, BY_NAME[stage].launch
    return launch.command(module, config.nproc, config.zero) if how == "accelerate" else [sys.executable, "-m", module]


def plan(config: PipelineConfig) -> list[Step]:
    """Every stage of every round, with the commands that run it."""
    steps = []
    rubric = ["--rubric", config.rubric] if config.rubric else []
    for r in range(1, config.rounds + 1):
        common = ["--run", round_run(config, r), "--runs_dir", config.runs_dir]
        sft_model = str(stage_dir(config, "sft", 1) / "model")
        for stage in (s for s in (STAGES if r == 1 else ROUND_STAGES) if s in config.enabled):
            settings = config.stages[stage]
            own = (["--config", settings.config] if settings.config else []) + common
            start = [] if r == 1 else ["--model_name_or_path", sft_model]  # later rounds start from round 1's SFT
            if stage == "candidates" and r > 1:  # ... but sample from the last round's policy
                start = ["--model_name_or_path", str(stage_dir(config, "ppo", r - 1) / "model")]
            if stage == "labeling":
                select, candidates = selection_command(config, r)
                commands = [select] if select else []
                commands.append(
                    [*stage_command(config, stage), "import-candidates", *own, "--db", db_url(config)]
                    + ["--file", candidates, "--rubric-gold-share", str(config.gold_share), *rubric]
                )
                if config.labeling == "simulated":
                    simulate = [*stage_command(config, stage), "simulate", *own, "--db", db_url(config), *rubric]
                    if config.labels_per_round:
                        simulate += ["--until-rankings", str(r * config.labels_per_round)]
                    commands.append(simulate + settings.args)
            elif stage == "export":
                commands = [[*stage_command(config, stage), "export", *common, "--db", db_url(config), *settings.args]]
            else:
                scored = rubric if stage in SCORED else []
                commands = [[*stage_command(config, stage), *own, *(start if stage != "sft" else []), *scored]]
                commands[0] += settings.args
            steps.append(Step(stage, r, commands, settings.config))
    return steps


def selection_command(config: PipelineConfig, r: int) -> tuple[list[str] | None, str]:
    """The command that gives round r's new candidates their priorities (None when nothing needs one), and the file
    the labeling stage imports. Active selection from round 2: round r-1's ensemble; with a label budget, random."""
    candidates = str(stage_dir(config, "candidates", r) / "candidates.jsonl")
    active = config.selection == "active" and r > 1
    if not active and not config.labels_per_round:
        return None, candidates  # every item is labeled: the order does not matter
    command = [sys.executable, "-m", "reward.select", "--run", round_run(config, r), "--runs_dir", config.runs_dir]
    command += ["--candidates", candidates, "--round", str(r)]
    if active:
        command += ["--by", config.active_by, "--reward_models", str(stage_dir(config, "rm", r - 1))]
    else:
        command += ["--by", "random", "--seed", str(r)]  # another random subset of the prompts each round
    return command, str(stage_dir(config, "selection", r) / "candidates.jsonl")


# --- skipping finished stages -------------------------------------------------------------------------------------


def upstream_of(config: PipelineConfig, step: Step) -> list[tuple[str, int]]:
    """(stage, round) of the runs this step reads: round r's candidates come from round r-1's policy."""
    if step.stage == "candidates" and step.round > 1:
        return [("ppo", step.round - 1)]
    if step.stage == "labeling" and step.round > 1 and config.selection == "active":
        return [("candidates", step.round), ("rm", step.round - 1)]
    upstream = [stage for stage in UPSTREAM[step.stage] if stage in config.enabled]
    return [(stage, 1 if stage == "sft" else step.round) for stage in upstream]


def read_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE
    return json.loads(path.read_text()) if path.exists() else None


def stage_key(step: Step, upstream: list[dict[str, Any] | None]) -> str:
    """What the stage's result depends on. Upstream stages count by their run (finish time), not just their key:
    a stage that re-ran for any reason gives its downstream stages new inputs."""
    config_text = Path(step.config_file).read_text() if step.config_file else ""
    payload = {
        "stage": step.stage,
        "round": step.round,
        "commands": [c[c.index("-m") + 1 :] if "-m" in c else c for c in step.commands],  # not the interpreter path
        "config": config_text,
        "upstream": [(u or {}).get("run_id") for u in upstream],
        "extra": step.extra_key,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def changed_inputs(directory: Path) -> list[str]:
    """The inputs recorded in the stage's summary.json whose files changed since (e.g. a user's edited dataset)."""
    summary = runs.read_summary(directory) or {}
    changed = []
    for name, recorded in (summary.get("inputs") or {}).items():
        if isinstance(recorded, dict) and "sha256" in recorded:
            path = Path(recorded["path"])
            if not path.exists() or runs.fingerprint(path) != recorded["sha256"]:
                changed.append(f"{name} ({path})")
    return changed


# --- the human labeling stage -------------------------------------------------------------------------------------


def labeling_progress(config: PipelineConfig, r: int) -> tuple[int, int]:
    """(current rankings of regular items, rankings needed to go on after round r), from the labeling stage's own
    API: ``labels_per_round`` more per round, else ``min_rankings``, else every item ``overlap`` times."""
    progress = labeling.labeling_progress(db_url(config))
    if config.labels_per_round:
        return progress.rankings, r * config.labels_per_round
    if config.min_rankings is not None:
        return progress.rankings, config.min_rankings
    settings = config.stages["labeling"]
    overlap = (labeling.load_config(settings.config) if settings.config else labeling.LabelingConfig()).overlap
    return progress.rankings, progress.items * overlap


# --- running ------------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def run_commands(step: Step, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    for command in step.commands:
        say(f"  $ {shlex.join(command[command.index('-m') + 1 :] if '-m' in command else command)}")
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(command)}\n")
        # The stage's own output (its progress bars) goes to the terminal as it is; the log keeps the commands. A
        # stage that fails with an expected error has its message printed last (errors.relay), above this one.
        status = errors.relay(command, env)
        if status != 0:
            raise StageFailed(f"exit status {status} from `{shlex.join(command)}`")


def headline(directory: Path) -> str:
    """The line of key figures the stage printed as it finished, as its summary.json keeps it."""
    return (runs.read_summary(directory) or {}).get("headline", "")


def still_current(directory: Path, state: dict[str, Any], key: str, forced: bool) -> bool:
    """Whether a stage's last run still holds (same settings and upstream, unchanged inputs, not forced to run);
    says why it runs again when it does not."""
    if not forced and state["key"] == key:
        changed = changed_inputs(directory)
        if not changed:
            return True
        say(f"  inputs changed since the last run: {', '.join(changed)}; running again")
    else:
        say("  settings or upstream stages changed since its last run; running again")
    return False


def selected_steps(
    config: PipelineConfig, start: str | None, only: str | None, only_round: int
) -> tuple[list[Step], set[tuple[str, int]]]:
    """The steps to go through, and the (stage, round) pairs among them that run even when up to date: ``--from``
    a stage forces it and every step after it; ``--only`` keeps just that one step, forced."""
    steps = plan(config)
    forced: set[tuple[str, int]] = set()
    if start:
        begin = next(i for i, s in enumerate(steps) if s.stage == start and s.round == only_round)
        forced = {(s.stage, s.round) for s in steps[begin:]}
    if only:
        steps = [s for s in steps if s.stage == only and s.round == only_round]
        if not steps:
            raise ValueError(f"No stage {only!r} in round {only_round}; rounds: {config.rounds}.")
        forced = {(only, only_round)}
    return steps, forced


def run_prepare(config: PipelineConfig, log: Path) -> bool:
    """The config's ``prepare`` modules, run before any stage (e.g. the demo's data); False when one failed."""
    if not config.prepare:
        return True
    say("\n━━ prepare ━━")
    try:
        run_commands(Step("prepare", 1, [[sys.executable, "-m", m] for m in config.prepare], None), log)
    except StageFailed as error:
        say(f"\n✗ prepare failed: {error}.")
        return False
    return True


def execute(config: PipelineConfig, start: str | None = None, only: str | None = None, only_round: int = 1) -> int:
    steps, forced = selected_steps(config, start, only, only_round)
    log = Path(config.runs_dir) / config.run / "pipeline.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t_start, results = time.perf_counter(), []
    if not run_prepare(config, log):
        return 1
    for index, step in enumerate(steps, start=1):
        directory = stage_dir(config, step.stage, step.round)
        if step.stage == "labeling" and config.labeling == "human":
            done, needed = labeling_progress(config, step.round)
            step.extra_key = done  # more labels: export and everything after runs again
        upstream = [read_state(stage_dir(config, stage, r)) for stage, r in upstream_of(config, step)]
        key, state = stage_key(step, upstream), read_state(directory)
        say(f"\n━━ [{index}/{len(steps)}] {step.name} ━━")
        if state and still_current(directory, state, key, forced=(step.stage, step.round) in forced):
            figures = headline(directory)
            say(f"  skipped: unchanged since its run of {state['finished_at']}" + (f" ({figures})" if figures else ""))
            results.append((step.name, "skipped", 0.0, figures))
            continue
        if step.stage == "labeling" and config.labeling == "human":
            run_commands(Step(step.stage, step.round, step.commands, None), log)  # import the new candidates
            done, needed = labeling_progress(config, step.round)
            if done < needed:
                say(
                    f"  waiting for labels: {done} of {needed} rankings so far, {needed - done} missing.\n"
                    f"  Start the app with `make label RUN={config.run}` (it prints the address and the admin login),"
                    "\n  let the labelers rank, then run the same command again: finished stages are skipped."
                )
                return NEEDS_LABELS
            step.extra_key = done
            key = stage_key(step, upstream)
        else:
            (directory / STATE).unlink(missing_ok=True)
            t0 = time.perf_counter()
            try:
                run_commands(step, log)
            except StageFailed as error:
                say(
                    f"\n✗ {step.name} failed: {error}.\n"
                    f"  The outputs of the stages before it are intact. Fix the cause above, then run the same command "
                    f"again: finished stages are skipped (or `--from {step.stage}` to start here)."
                )
                summarize(results, time.perf_counter() - t_start)
                return 1
            results.append((step.name, "ran", time.perf_counter() - t0, headline(directory)))
        directory.mkdir(parents=True, exist_ok=True)
        finished = time.strftime("%Y-%m-%d %H:%M:%S")
        runs.write_json(directory / STATE, {"key": key, "finished_at": finished, "run_id": time.time_ns()})
        if step.stage == "labeling" and config.labeling == "human":
            results.append((step.name, "ready", 0.0, f"{done} rankings"))

    if not only:
        report = write_report(config)
        say(f"\nReport: {report} (and {report.with_suffix('.html')})")
    summarize(results, time.perf_counter() - t_start)
    return 0


def summarize(results: list[tuple[str, str, float, str]], total: float) -> None:
    if not results:
        return
    width = max(len(name) for name, *_ in results)
    say("\nstage".ljust(width + 2) + "  status   time     key figures")
    for name, status, seconds, figures in results:
        took = runs.format_duration(seconds) if status == "ran" else "-"
        say(f"{name.ljust(width)}  {status:<8} {took:<8} {figures}")
    say(f"total {runs.format_duration(total)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Run the pipeline, skipping the stages that are up to date.")
    run.add_argument("--config", default="configs/pipeline.yaml")
    run.add_argument("--run", default=None, help="Run name (default: the config's).")
    run.add_argument("--runs_dir", default=None)
    run.add_argument("--rounds", type=int, default=None)
    group = run.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", choices=STAGES, help="Run this stage and all after it again.")
    group.add_argument("--only", choices=STAGES, help="Run only this stage (again).")
    run.add_argument("--round", type=int, default=1, help="The round --from/--only refer to (default: 1).")
    report = commands.add_parser("report", help="Write runs/<run>/report.md and report.html from what is there.")
    report.add_argument("--config", default="configs/pipeline.yaml")
    report.add_argument("--run", default=None)
    report.add_argument("--runs_dir", default=None)
    report.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig.from_yaml(args.config, run=args.run, runs_dir=args.runs_dir, rounds=args.rounds)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "report":
        print(write_report(config))
        return 0
    return execute(config, start=args.start, only=args.only, only_round=args.round)
