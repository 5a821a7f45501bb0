"""The demo data set: a support-mail assistant for a small pottery shop, which writes in the shop's house style.

Juniper & Co. is an invented four-person ceramics studio. Its team wants an assistant that drafts replies to
customer e-mails in the team's own HOUSE STYLE, whose six rules ``pipeline.demo.house`` lists.

Everything is generated from templates and a seed; nothing is downloaded. The SFT splits deliberately mix the
house style (30%) with eight other styles that each break some of the rules, so supervised fine-tuning alone
learns the content but not reliably the style: teaching the style is left to the preference stages.
``pipeline.demo.rubric.house_style_score`` is the gold rubric those stages are measured against.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from pipeline.demo.scenarios import SCENARIO_BY_NAME, SCENARIOS, Scenario
from pipeline.demo.styles import STYLE_WRITERS, ReplyParts
from pipeline.demo.words import (
    CODES,
    DAYS,
    EMAIL_CLOSERS,
    EMAIL_OPENERS,
    FIRST_NAMES,
    GLAZES,
    INSTRUCTIONS,
    LAST_NAMES,
    MAKERS,
    PIECES,
    RESTOCKS,
    STREETS,
    TITLES,
    TOWNS,
    WAITS,
)
from pipeline.lib.tables import read_jsonl, write_jsonl

DEMO_VERSION = "demo-v1"
SPLIT_SIZES = {"sft_train": 1800, "sft_eval": 200, "prompts": 500, "eval_prompts": 100}
SFT_SPLITS = ("sft_train", "sft_eval")

# Share of each style in the SFT splits. The house style is a minority on purpose (see the module docstring).
STYLE_MIX = {
    "house": 0.30,
    "formal": 0.10,
    "terse": 0.09,
    "rambling": 0.09,
    "over_apologetic": 0.09,
    "corporate": 0.09,
    "no_greeting": 0.08,
    "full_name": 0.08,
    "missing_signoff": 0.08,
}

# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------


def _slots(rng: random.Random) -> dict[str, str]:
    """Random values for every template slot; each template uses the ones it names."""
    item, other = rng.sample([f"{glaze} {piece}" for glaze in GLAZES for piece in PIECES], 2)
    return {
        "first": rng.choice(FIRST_NAMES),
        "last": rng.choice(LAST_NAMES),
        "item": item,
        "Item": item[0].upper() + item[1:],
        "other": other,
        "order": str(rng.randint(10000, 99999)),
        "maker": rng.choice(MAKERS),
        "day": rng.choice(DAYS),
        "wait": rng.choice(WAITS),
        "restock": rng.choice(RESTOCKS),
        "code": rng.choice(CODES),
        "amount": str(rng.randint(24, 160)),
        "diff": str(rng.randint(3, 24)),
        "address": f"{rng.randint(2, 240)} {rng.choice(STREETS)}, {rng.choice(TOWNS)}",
    }


def _email(scenario: Scenario, slots: dict[str, str], rng: random.Random) -> str:
    body = rng.choice(EMAIL_OPENERS) + rng.choice(scenario.bodies) + rng.choice(EMAIL_CLOSERS)
    return (
        f"{rng.choice(INSTRUCTIONS)}\n\n"
        f"From: {slots['first']} {slots['last']}\n"
        f"Subject: {rng.choice(scenario.subjects)}\n\n"
        f"{body}"
    ).format(**slots)


def _reply_parts(scenario: Scenario, slots: dict[str, str], prompt: str, rng: random.Random) -> ReplyParts:
    def fill(options: tuple[str, ...]) -> str:
        return rng.choice(options).format(**slots)

    return ReplyParts(
        first=slots["first"],
        last=slots["last"],
        title=TITLES[slots["first"]],
        reference=f"order #{slots['order']}" if slots["order"] in prompt else f"your {slots['item']}",
        apology=fill(scenario.apologies) if scenario.problem else None,
        step=fill(scenario.steps),
        terse=fill(scenario.terse),
        extra=fill(scenario.extras),
    )


def _balanced(labels: list[str], weights: list[float], n: int, rng: random.Random) -> list[str]:
    """``n`` labels in the given proportions (largest-remainder rounding), in random order."""
    exact = [w * n / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(labels)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    out = [label for label, count in zip(labels, counts, strict=True) for _ in range(count)]
    rng.shuffle(out)
    return out


def replies_in_styles(row: dict, k: int, rng: random.Random) -> list[str]:
    """``k`` replies to a demo prompt row (``id``, ``prompt``, ``scenario``), each in a different style."""
    email = row["prompt"][-1]["content"]
    sender = re.search(r"^From: (\S+) (\S+)", email, re.MULTILINE)
    if sender is None:
        raise ValueError(f"demo prompt {row['id']} has no 'From: First Last' line")
    first, last = sender.groups()
    slots = _slots(rng) | {"first": first, "last": last}
    scenario = SCENARIO_BY_NAME[row["scenario"]]
    # Only problem scenarios have apologies; every scenario has steps, one-liners and closings.
    apology = rng.choice(scenario.apologies).format(**slots) if scenario.apologies else None
    step, terse, extra = (
        rng.choice(options).format(**slots) for options in (scenario.steps, scenario.terse, scenario.extras)
    )
    parts = ReplyParts(first, last, TITLES.get(first), f"order #{slots['order']}", apology, step, terse, extra)
    return [STYLE_WRITERS[style](parts, rng) for style in rng.sample(list(STYLE_WRITERS), k)]


def generate(seed: int = 0) -> dict[str, list[dict]]:
    """The four splits. Every prompt is unique across all of them, so no split leaks into another."""
    rng = random.Random(seed)
    names = [s.name for s in SCENARIOS]
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        scenarios = _balanced(names, [1.0] * len(names), size, rng)
        styles = _balanced(list(STYLE_MIX), list(STYLE_MIX.values()), size, rng) if split in SFT_SPLITS else None
        rows = []
        for i, name in enumerate(scenarios):
            scenario = SCENARIO_BY_NAME[name]
            while True:
                slots = _slots(rng)
                prompt = _email(scenario, slots, rng)
                if prompt not in seen:
                    seen.add(prompt)
                    break
            row = {"id": f"{split}-{i:05d}", "prompt": [{"role": "user", "content": prompt}], "scenario": name}
            if styles is not None:
                reply = STYLE_WRITERS[styles[i]](_reply_parts(scenario, slots, prompt, rng), rng)
                row |= {"completion": [{"role": "assistant", "content": reply}], "style": styles[i]}
            rows.append(row)
        splits[split] = rows
    return splits


def write_demo_data(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``<split>.jsonl`` for each split; the same seed gives byte-identical files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in generate(seed).items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(paths[split], rows)
    return paths


def ensure_demo_data(runs_dir: str | Path = "runs") -> Path:
    """The demo data set ``runs_dir/_data/demo/``, built on first use and rebuilt when ``DEMO_VERSION`` changes.

    It is written into a temporary sibling and renamed into place, so a crash never leaves a half-written data set
    and two processes building it at once both end up with one complete copy.
    """
    target = Path(runs_dir) / "_data" / "demo"
    if is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_demo_data(tmp)
        stamp(tmp)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


VERSION_FILE = "DEMO_VERSION"


def is_current(directory: Path) -> bool:
    """Whether ``directory`` was built by this version of the demo."""
    version = directory / VERSION_FILE
    return version.is_file() and version.read_text().strip() == DEMO_VERSION


def stamp(directory: Path) -> None:
    (directory / VERSION_FILE).write_text(DEMO_VERSION + "\n")


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the freshly built ``tmp`` to ``target``: an older build there is set aside first, and a current one
    another process finished meanwhile is kept."""
    if target.exists():
        if is_current(target):
            return
        stale = target.with_name(f".{target.name}-stale-{os.getpid()}")
        os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not is_current(target):  # not a lost race with another process: a real failure
            raise


def corpus_texts(seed: int = 0) -> list[str]:
    """Every user and assistant text of all splits, in order: the tokenizer's training corpus."""
    return [
        message["content"]
        for rows in generate(seed).values()
        for row in rows
        for message in row["prompt"] + row.get("completion", [])
    ]


def style_share(rows: list[dict], style: str = "house") -> float:
    return sum(row.get("style") == style for row in rows) / len(rows) if rows else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo data set as JSONL files.")
    parser.add_argument("--out", required=True, help="Directory to write <split>.jsonl into.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_demo_data(args.out, args.seed)
    for split, path in paths.items():
        rows = read_jsonl(path)
        line = f"{split:>12}: {len(rows):5d} rows -> {path}"
        if split in SFT_SPLITS:
            counts = Counter(row["style"] for row in rows)
            line += (
                f"  (house style {style_share(rows):.0%}; styles: {', '.join(f'{s} {counts[s]}' for s in STYLE_MIX)})"
            )
        print(line)


if __name__ == "__main__":
    main()
