"""The stage list, in the order the pipeline runs it: each stage's name, the module that runs it, how it is launched,
its ``make`` target and what it does.

The conductor starts the stages from it, its config takes the stage names from it and the report lists the stages'
outputs by it. The Makefile cannot import it, so tests/test_conductor_stages.py checks that each stage's target runs
the stage's module the same way and that ``make help`` describes it in the same words; the same test imports every
module named here (names, so that the conductor starts without importing torch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # its directory, runs/<run>/<name>/, and its name in configs/pipeline.yaml's stages:
    module: str  # run as `python -m module`
    launch: str  # accelerate: under `accelerate launch` (pipeline.lib.launch's rules); python: a plain process
    make_target: str
    description: str  # the make target's help line
    upstream: tuple[str, ...] = ()  # the stages whose outputs it reads (a change there runs it again)
    optional: bool = False  # run only when configs/pipeline.yaml's stages: names it
    also_writes: tuple[str, ...] = ()  # other directories of runs/<run>/ it writes a summary.json into

    @property
    def directories(self) -> tuple[str, ...]:
        return (self.name, *self.also_writes)


REGISTRY = (
    Stage(
        "sft",
        "pipeline.sft",
        "accelerate",
        "sft",
        "stage 1: supervised fine-tuning (configs/sft.yaml)",
    ),
    Stage(
        "candidates",
        "pipeline.candidates",
        "accelerate",
        "candidates",
        "stage 2a: the SFT model samples k candidates per prompt (configs/candidates.yaml)",
        upstream=("sft",),
    ),
    # The candidates become items to label here (make import-candidates), not in the candidates stage: they are imported
    # after reward.select has ordered them (in selection/; by the last round's reward models from round 2 on), which
    # the candidates stage does not wait for. Then people rank the items (make label), or simulated labelers do.
    Stage(
        "labeling",
        "labeling_ui",
        "python",
        "label",
        "stage 2b: the ranking app for people (prints the URL, and the admin login on first run); WORKERS=N "
        "DB=postgresql://...: N processes behind nginx",
        upstream=("candidates",),
        also_writes=("selection",),
    ),
    Stage(
        "export",
        "labeling_ui",
        "python",
        "export",
        "stage 2c: rankings -> preference pairs in runs/<run>/export/",
        upstream=("labeling",),
    ),
    Stage(
        "rm",
        "reward.train",
        "accelerate",
        "rm",
        "stage 3: reward model on the exported preferences (configs/rm.yaml)",
        upstream=("sft", "export"),
    ),
    Stage(
        "ppo",
        "ppo.train",
        "accelerate",
        "ppo",
        "stage 4: PPO against the reward model (configs/ppo.yaml)",
        upstream=("sft", "rm"),
    ),
    Stage(
        "dpo",
        "dpo.train",
        "accelerate",
        "dpo",
        "DPO on the exported pairs from the SFT policy, to compare with PPO in make eval (configs/dpo.yaml)",
        upstream=("sft", "export"),
        optional=True,  # DPO on the same labels, for the evaluation to compare
    ),
    Stage(
        "eval",
        "evaluation.evaluate",
        "python",
        "eval",
        "SFT, PPO, best-of-n (and DPO, once trained) on held-out prompts: summary, report.md, plots",
        upstream=("sft", "rm", "ppo", "dpo"),
    ),
)
BY_NAME = {stage.name: stage for stage in REGISTRY}
