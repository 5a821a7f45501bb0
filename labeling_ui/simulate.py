"""Simulated labelers: ``python -m labeling_ui simulate --run R`` (``make simulate``) ranks every item without people.

Each simulated labeler scores every response with a rubric, ``module:function(prompt, response) -> float`` (higher is
better; ``--rubric`` or the labeling config's ``rubric``, there is no default), adds Gaussian noise with its own sigma,
and ranks by the noisy scores. Responses with equal rubric scores get the same noise and so stay tied, and replies
whose noisy scores lie within ``tie_tolerance`` of each other are ranked as a tie, as a person finds two replies
equally good. The noise is seeded by (seed, labeler, item): a run gives the same rankings whatever order the items come in.

Without ``--url`` the labelers call ``LabelingService`` in this process, the code behind the app's page and API (500
items x 2 labelers take seconds). With ``--url`` each labeler logs in to a running app with gradio_client and works
in its own thread, as a person would. The simulated users are created on the first run, flagged
``simulated``; their passwords are kept in ``runs/<run>/labeling/simulated_users.json`` for later runs over HTTP.

``--until-rankings N`` is a label budget: the labelers stop once the database holds N current rankings of regular
items (the pipeline's ``labels_per_round``, summed over the rounds so far), so the items the assignment hands out
first (fewest rankings, highest priority) are the ones labeled. Over ``--url`` each of the labelers may finish the
item in hand, so up to ``labelers - 1`` more rankings can land.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from labeling_ui import stats
from labeling_ui.assignment import stable_hash
from labeling_ui.config import LabelingConfig
from labeling_ui.rules import Submission, ranks_from_scores
from labeling_ui.service import LabelingService
from labeling_ui.storage import LabelStore
from labeling_ui.users import generate_password
from pipeline.lib.rubric import load_rubric

Rubric = Callable[[str, str], float]


def rubric_of(config: LabelingConfig) -> Rubric:
    """The config's rubric, loaded; a ValueError that says how to name one when the config has none."""
    rubric = load_rubric(config.rubric)
    if rubric is None:
        raise ValueError(
            "The simulated labelers need a rubric to rank by: pass --rubric module:function (a function(prompt, "
            "response) -> float, higher is better; `make simulate RUBRIC=module:function`), or set `rubric:` in the "
            "labeling config."
        )
    return rubric


def noisy_ranks(scores: Sequence[float], sigma: float, rng: random.Random, tie_tolerance: float = 0.0) -> list[int]:
    """Dense ranks (1 = best) of ``scores`` plus Gaussian noise; equal scores draw the same noise and stay tied, and
    noisy scores within ``tie_tolerance`` of the best of their group join it (a group spans at most the tolerance)."""
    noise: dict[float, float] = {}
    noisy = []
    for score in scores:
        key = round(score, 6)
        if key not in noise:
            noise[key] = rng.gauss(0.0, sigma) if sigma else 0.0
        noisy.append(score + noise[key])
    if not tie_tolerance:
        return ranks_from_scores(noisy)
    ranks, rank, top = [0] * len(noisy), 0, None
    for i in sorted(range(len(noisy)), key=lambda i: -noisy[i]):
        if top is None or top - noisy[i] > tie_tolerance:
            rank, top = rank + 1, noisy[i]
        ranks[i] = rank
    return ranks


@dataclass
class SimulatedLabeler:
    username: str
    sigma: float
    rubric: Rubric
    seed: int = 0
    tie_tolerance: float = 0.0

    def rank(self, item: dict[str, Any]) -> dict[str, int]:
        """Ranks {candidate_id: rank} of an item as the API returns it (``LabelingService.next_item``)."""
        rng = random.Random(stable_hash(self.seed, "simulate", self.username, item["item_id"]))
        scores = [self.rubric(item["prompt"], c["text"]) for c in item["candidates"]]
        ranks = noisy_ranks(scores, self.sigma, rng, self.tie_tolerance)
        return {c["id"]: rank for c, rank in zip(item["candidates"], ranks, strict=True)}


def ensure_users(store: LabelStore, names: Sequence[str], passwords_file: Path) -> dict[str, str | None]:
    """Create the simulated users that do not exist yet; {name: password} (None: created elsewhere, unknown here)."""
    key = store.engine.url.render_as_string(hide_password=True)  # one file may serve several databases
    saved = json.loads(passwords_file.read_text()) if passwords_file.exists() else {}
    known = saved.setdefault(key, {})
    users = {u["username"]: u for u in store.list_users()}
    for name in names:
        if name in users and not users[name]["simulated"]:
            raise ValueError(f"User {name!r} exists and is not a simulated labeler: pick other names.")
        if name not in users:
            known[name] = generate_password()
            store.add_user(name, known[name], role="labeler", simulated=True)
    passwords_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = passwords_file.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(saved, fh, indent=2, sort_keys=True)
    os.replace(tmp, passwords_file)
    return {name: known.get(name) for name in names}


class _Progress:
    """One bar for all labelers; its total is what they have left (at most ``cap`` rankings: a budget),
    re-estimated as they report it."""

    def __init__(self, names: Sequence[str], cap: int | None = None):
        self.bar = tqdm(total=0, unit="ranking", desc="simulate", dynamic_ncols=True)
        self.left = dict.fromkeys(names, 0)
        self.cap = cap
        self.lock = threading.Lock()

    def seen(self, name: str, item: dict | None) -> None:
        with self.lock:
            self.left[name] = item["total"] - item["done"] if item else 0
            total = self.bar.n + sum(self.left.values())
            self.bar.total = total if self.cap is None else min(total, self.cap)

    def done(self) -> None:
        with self.lock:
            self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _in_process(
    service: LabelingService,
    labelers: list[SimulatedLabeler],
    limit: int | None,
    progress: _Progress,
    spent: Callable[[], bool],
) -> dict:
    """Labelers take turns, one item each, as people working at the same time would."""
    counts = dict.fromkeys((lab.username for lab in labelers), 0)
    active = list(labelers)
    while active:
        for labeler in list(active):
            stop = counts[labeler.username] == limit or spent()
            item = None if stop else service.next_item(labeler.username)
            progress.seen(labeler.username, item)
            if item is None:
                active.remove(labeler)
                continue
            started = time.perf_counter()
            ranks = labeler.rank(item)
            submission = Submission(
                uuid.uuid4().hex, item["item_id"], ranks, seconds_spent=time.perf_counter() - started
            )
            result = service.submit(labeler.username, submission)
            if not result["ok"]:
                raise RuntimeError(f"{labeler.username}'s ranking was refused: {result['message']}")
            counts[labeler.username] += 1
            progress.done()
    return counts


def _over_http(
    url: str,
    labeler: SimulatedLabeler,
    password: str,
    limit: int | None,
    progress: _Progress,
    spent: Callable[[], bool],
) -> int:
    """One labeler logged in to the app at ``url``, ranking until nothing is left (or ``limit``, or the budget)."""
    # Gradio's client (with httpx and huggingface_hub, ~0.5 s to import) loads only for a run against a live app.
    from gradio_client import Client

    client = Client(url, auth=(labeler.username, password), verbose=False)
    count = 0
    while count != limit and not spent():
        item = client.predict(api_name="/next_item")
        progress.seen(labeler.username, item)
        if item is None:
            break
        started = time.perf_counter()
        ranks = json.dumps(labeler.rank(item))
        result = client.predict(
            uuid.uuid4().hex,
            item["item_id"],
            ranks,
            False,
            "{}",
            "",
            time.perf_counter() - started,
            api_name="/submit",
        )
        if not result["ok"]:
            raise RuntimeError(f"{labeler.username}'s ranking was refused: {result['message']}")
        count += 1
        progress.done()
    return count


def simulate(
    store: LabelStore,
    config: LabelingConfig,
    passwords_file: Path,
    n_labelers: int | None = None,
    url: str | None = None,
    limit: int | None = None,
    until_rankings: int | None = None,
) -> dict[str, Any]:
    """Run the simulated labelers against ``store`` (in process) or the app at ``url``; returns the summary.

    From ``config``: the rubric (required), the noise levels (labeler i gets ``noise[i % len(noise)]``; one labeler
    per level by default), the tie tolerance, the guidelines version and the seed. ``until_rankings``: stop once
    the database holds that many current rankings of regular items.
    """
    n_labelers = n_labelers or len(config.noise)
    if n_labelers < 1:
        raise ValueError(f"--labelers must be at least 1, got {n_labelers}.")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1 (rankings per labeler), got {limit}.")
    if until_rankings is not None and until_rankings < 0:
        raise ValueError(f"--until-rankings must be 0 or more (rankings in the database), got {until_rankings}.")
    rubric = rubric_of(config)
    labelers = [
        SimulatedLabeler(
            f"sim-{i + 1}", config.noise[i % len(config.noise)], rubric, config.seed, config.tie_tolerance
        )
        for i in range(n_labelers)
    ]
    passwords = ensure_users(store, [lab.username for lab in labelers], passwords_file)

    def spent() -> bool:
        return until_rankings is not None and store.labeling_progress().rankings >= until_rankings

    cap = None if until_rankings is None else max(0, until_rankings - store.labeling_progress().rankings)
    progress = _Progress([lab.username for lab in labelers], cap)
    started = time.perf_counter()
    try:
        if url is None:
            counts = _in_process(LabelingService(store, config), labelers, limit, progress, spent)
        else:
            known = {name: password for name, password in passwords.items() if password is not None}
            missing = [name for name in passwords if name not in known]
            if missing:
                raise ValueError(
                    f"No saved password for {', '.join(missing)} in {passwords_file}: run without "
                    "--url, or with other --labelers."
                )
            with ThreadPoolExecutor(len(labelers)) as pool:
                futures = {
                    lab.username: pool.submit(_over_http, url, lab, known[lab.username], limit, progress, spent)
                    for lab in labelers
                }
                counts = {name: future.result() for name, future in futures.items()}
    finally:
        progress.close()
    rankings = store.all_current_rankings()
    by_name = {s["username"]: s for s in stats.labeler_stats(store.list_users(), rankings)}
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "mode": url or "in-process",
        "labelers": [
            {
                "username": lab.username,
                "sigma": lab.sigma,
                "submitted": counts[lab.username],
                "rankings": by_name[lab.username]["count"],
                "gold_accuracy": by_name[lab.username]["gold_accuracy"],
            }
            for lab in labelers
        ],
        "agreement": stats.agreement(rankings),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(summary: dict[str, Any]) -> None:
    """Print what ``simulate`` returns: rankings per labeler, gold accuracy and agreement."""
    total = sum(lab["submitted"] for lab in summary["labelers"])
    print(f"[simulate] {total} rankings in {summary['seconds']} s ({summary['mode']}):")
    for lab in summary["labelers"]:
        print(
            f"  {lab['username']} (sigma {lab['sigma']}): {lab['submitted']} submitted now, {lab['rankings']} in all, "
            f"gold accuracy {_fmt(lab['gold_accuracy'])}"
        )
    a = summary["agreement"]
    print(
        f"[simulate] agreement over {a['n_items']} items ranked twice or more: "
        f"pairwise {_fmt(a['pairwise_agreement'])}, Kendall's tau {_fmt(a['kendall_tau'])}, "
        f"Krippendorff's alpha {_fmt(a['krippendorff_alpha'])}"
    )
