"""The whole pipeline as one command: ``python -m pipeline run --config configs/pipeline.yaml`` (``make pipeline``).

Stages, in order: sft, candidates, labeling, export, rm, ppo, eval; then the report. Each stage runs as its own
process (through ``accelerate launch`` where it trains), exactly as its ``make`` target would run it, so a crash in
one stage leaves the pipeline, and every earlier output, intact.

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
import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.lib import runs
from pipeline.lib.launch import threads_per_process

STAGES = ("sft", "candidates", "labeling", "export", "rm", "ppo", "eval")
ROUND_STAGES = STAGES[1:]  # what a round after the first repeats
UPSTREAM = {
    "sft": (),
    "candidates": ("sft",),
    "labeling": ("candidates",),
    "export": ("labeling",),
    "rm": ("sft", "export"),
    "ppo": ("sft", "rm"),
    "eval": ("sft", "rm", "ppo"),
}
TRAINING = {"sft": "pipeline.sft", "candidates": "pipeline.candidates", "rm": "reward.train", "ppo": "ppo.train"}
STATE = "pipeline.json"
NEEDS_LABELS = 3  # exit status: the human labeling stage is waiting for labels


class StageFailed(RuntimeError):
    pass


class WaitingForLabels(RuntimeError):
    pass


@dataclass
class StageSettings:
    config: str | None = None  # the stage's own YAML (configs/<stage>.yaml)
    args: list[str] = field(default_factory=list)  # overrides, as on the stage's command line


@dataclass
class PipelineConfig:
    run: str = runs.DEFAULT_RUN
    runs_dir: str = "runs"
    rounds: int = 1
    labeling: str = "simulated"  # simulated: the simulated labelers rank; human: people rank in the app
    db: str | None = None  # labels database URL; default: runs/<run>/labeling/labels.db
    gold_share: float = 0.0  # demo only: this share of prompts become gold items ranked by the demo rubric
    min_rankings: int | None = None  # human: rankings needed to go on (default: every regular item `overlap` times)
    nproc: int = 1  # processes for the training stages (accelerate launch)
    zero: int = 0  # DeepSpeed ZeRO stage for the training stages: 0 (off), 2 or 3
    stages: dict[str, StageSettings] = field(default_factory=dict)

    def __post_init__(self):
        given = self.stages  # from YAML: {stage: {config, args}}; a stage left out gets its defaults
        self.stages = {
            name: s if isinstance(s := given.get(name) or {}, StageSettings) else StageSettings(**s) for name in STAGES
        }
        if self.labeling not in ("simulated", "human"):
            raise ValueError(f"labeling must be 'simulated' or 'human', got {self.labeling!r}.")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}.")
        if self.zero not in (0, 2, 3):
            raise ValueError(f"zero must be 0, 2 or 3, got {self.zero}.")
        for name, settings in self.stages.items():
            if settings.config and not Path(settings.config).exists():
                raise ValueError(f"stages.{name}.config: {settings.config} does not exist.")
            if not all(isinstance(a, str | int | float) for a in settings.args):
                raise ValueError(f"stages.{name}.args must be a list of command-line words, got {settings.args!r}.")
            settings.args = [str(a) for a in settings.args]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PipelineConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}.")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**raw)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{Path(self.runs_dir) / self.run / 'labeling' / 'labels.db'}"


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


def round_run(config: PipelineConfig, r: int) -> str:
    return config.run if r == 1 else f"{config.run}/round{r}"


def launch(config: PipelineConfig, module: str) -> list[str]:
    """The command that runs a training stage: accelerate launch with the configs/accelerate file for the setup."""
    if config.zero:
        accelerate_file = f"configs/accelerate/zero{config.zero}.yaml"
    else:
        accelerate_file = "configs/accelerate/single.yaml" if config.nproc == 1 else "configs/accelerate/ddp.yaml"
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        accelerate_file,
        "--num_processes",
        str(config.nproc),
        "--num_cpu_threads_per_process",
        str(threads_per_process(config.nproc)),
        "-m",
        module,
    ]


def stage_dir(config: PipelineConfig, stage: str, r: int) -> Path:
    return runs.stage_dir(round_run(config, r), stage, config.runs_dir)


def plan(config: PipelineConfig) -> list[Step]:
    """Every stage of every round, with the commands that run it."""
    steps = []
    base = ["--runs_dir", config.runs_dir]
    first = lambda stage: str(stage_dir(config, stage, 1))  # noqa: E731
    for r in range(1, config.rounds + 1):
        run = round_run(config, r)
        common = ["--run", run, *base]
        for stage in STAGES if r == 1 else ROUND_STAGES:
            settings = config.stages[stage]
            own = (["--config", settings.config] if settings.config else []) + common
            if stage == "sft":
                commands = [[*launch(config, TRAINING[stage]), *own, *settings.args]]
            elif stage == "candidates":
                model = [] if r == 1 else ["--model_name_or_path", str(stage_dir(config, "ppo", r - 1) / "model")]
                commands = [[*launch(config, TRAINING[stage]), *own, *model, *settings.args]]
            elif stage == "labeling":
                candidates = str(stage_dir(config, "candidates", r) / "candidates.jsonl")
                imports = [
                    sys.executable,
                    "-m",
                    "labeling_ui",
                    "import-candidates",
                    *common,
                    "--db",
                    config.db_url,
                    "--file",
                    candidates,
                    "--rubric-gold-share",
                    str(config.gold_share),
                ]
                commands = [imports]
                if config.labeling == "simulated":
                    commands.append(
                        [sys.executable, "-m", "labeling_ui", "simulate", *own, "--db", config.db_url, *settings.args]
                    )
            elif stage == "export":
                commands = [
                    [sys.executable, "-m", "labeling_ui", "export", *common, "--db", config.db_url, *settings.args]
                ]
            elif stage == "rm":
                sft = [] if r == 1 else ["--model_name_or_path", first("sft") + "/model"]
                commands = [[*launch(config, TRAINING[stage]), *own, *sft, *settings.args]]
            elif stage == "ppo":
                sft = [] if r == 1 else ["--sft_model_path", first("sft") + "/model"]
                commands = [[*launch(config, TRAINING[stage]), *own, *sft, *settings.args]]
            else:  # eval
                sft = [] if r == 1 else ["--sft_model_path", first("sft") + "/model"]
                commands = [[sys.executable, "-m", "ppo.evaluate", *own, *sft, *settings.args]]
            steps.append(Step(stage, r, commands, settings.config))
    return steps


# --- skipping finished stages -------------------------------------------------------------------------------------


def upstream_of(step: Step) -> list[tuple[str, int]]:
    """(stage, round) of the runs this step reads: round r's candidates come from round r-1's policy."""
    if step.stage == "candidates" and step.round > 1:
        return [("ppo", step.round - 1)]
    return [(stage, 1 if stage == "sft" else step.round) for stage in UPSTREAM[step.stage]]


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


def labeling_progress(config: PipelineConfig, overlap: int) -> tuple[int, int]:
    """(current rankings of regular items, rankings needed to go on)."""
    import sqlalchemy as sa

    from labeling_ui.db import Item, Ranking, make_engine, migrate

    migrate(config.db_url)
    engine = make_engine(config.db_url)
    try:
        with engine.connect() as connection:
            items = connection.scalar(sa.select(sa.func.count()).select_from(Item).where(~Item.is_gold))
            done = connection.scalar(
                sa.select(sa.func.count())
                .select_from(Ranking)
                .join(Item, Item.id == Ranking.item_id)
                .where(Ranking.is_current, ~Item.is_gold)
            )
    finally:
        engine.dispose()
    needed = config.min_rankings if config.min_rankings is not None else items * overlap
    return done, needed


def labeling_overlap(config: PipelineConfig) -> int:
    settings = config.stages["labeling"]
    raw = yaml.safe_load(Path(settings.config).read_text()) if settings.config else {}
    return int((raw or {}).get("overlap", 2))


# --- running ------------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def run_commands(step: Step, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    for command in step.commands:
        say(f"  $ {shlex.join(command[command.index('-m') + 1 :] if '-m' in command else command)}")
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(command)}\n")
        # The stage's own output (its progress bars) goes to the terminal as it is; the log keeps the commands.
        status = subprocess.run(command, env=env).returncode
        if status != 0:
            raise StageFailed(f"exit status {status} from `{shlex.join(command)}`")


def headline(stage: str, directory: Path) -> str:
    """One line of the stage's key figures, from its summary.json."""
    metrics = (runs.read_summary(directory) or {}).get("metrics", {})
    keys = {
        "sft": ("eval_loss_before", "eval_loss_after"),
        "candidates": ("prompts", "new_items"),
        "export": ("rankings", "pairs"),
        "rm": ("eval_accuracy", "eval_gold_accuracy"),
        "ppo": ("score_first", "score_last", "kl_last", "gold_score_first", "gold_score_last"),
    }.get(stage, ())
    if stage == "eval" and metrics:
        gold = [metrics[p].get("gold_score") for p in ("sft", "ppo")]
        shown = [f"win_rate={metrics['win_rate_ppo_vs_sft']:.3g}", f"kl={metrics['ppo']['kl_to_reference']:.3g}"]
        return ", ".join(shown + ([f"gold {gold[0]:.3g} -> {gold[1]:.3g}"] if None not in gold else []))
    shown = []
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, dict):  # eval nests per-policy figures
            continue
        if value is not None:
            shown.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(shown)


def execute(config: PipelineConfig, start: str | None = None, only: str | None = None, only_round: int = 1) -> int:
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

    log = Path(config.runs_dir) / config.run / "pipeline.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t_start, results = time.perf_counter(), []
    for index, step in enumerate(steps, start=1):
        directory = stage_dir(config, step.stage, step.round)
        if step.stage == "labeling" and config.labeling == "human":
            done, needed = labeling_progress(config, labeling_overlap(config))
            step.extra_key = done  # more labels: export and everything after runs again
        upstream = [read_state(stage_dir(config, stage, r)) for stage, r in upstream_of(step)]
        key, state = stage_key(step, upstream), read_state(directory)
        say(f"\n━━ [{index}/{len(steps)}] {step.name} ━━")
        if (step.stage, step.round) not in forced and state and state["key"] == key:
            changed = changed_inputs(directory)
            if not changed:
                figures = headline(step.stage, directory)
                say(
                    f"  skipped: unchanged since its run of {state['finished_at']}"
                    + (f" ({figures})" if figures else "")
                )
                results.append((step.name, "skipped", 0.0, figures))
                continue
            say(f"  inputs changed since the last run: {', '.join(changed)}; running again")
        elif state:
            say("  settings or upstream stages changed since its last run; running again")
        if step.stage == "labeling" and config.labeling == "human":
            run_commands(Step(step.stage, step.round, step.commands, None), log)  # import the new candidates
            done, needed = labeling_progress(config, labeling_overlap(config))
            if done < needed:
                say(
                    f"  waiting for labels: {done} of {needed} rankings so far, {needed - done} missing.\n"
                    f"  Start the app with `make label RUN={config.run}` (it prints the address and the admin login),"
                    "\n  let the labelers rank, then run `make pipeline` again: finished stages are skipped."
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
            results.append((step.name, "ran", time.perf_counter() - t0, headline(step.stage, directory)))
        directory.mkdir(parents=True, exist_ok=True)
        finished = time.strftime("%Y-%m-%d %H:%M:%S")
        runs.write_json(directory / STATE, {"key": key, "finished_at": finished, "run_id": time.time_ns()})
        if step.stage == "labeling" and config.labeling == "human":
            results.append((step.name, "ready", 0.0, f"{done} rankings"))

    if not only:
        from pipeline.conductor.report import write_report

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
        from pipeline.conductor.report import write_report

        print(write_report(config))
        return 0
    return execute(config, start=args.start, only=args.only, only_round=args.round)
