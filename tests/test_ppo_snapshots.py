"""PPO's policy snapshots without training: the steps they are taken at, the index across a resume and a fresh start,
the evaluation's refusal of an unfinished run's snapshots, and the frontier plot's line of them. The training run that
writes them, and the evaluation that reads them, are tested in tests/test_ppo.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evaluation.best_of_n import draw_frontier, plot_frontier, snapshots_sentence
from ppo import checkpoint


@pytest.mark.parametrize(
    ("num_steps", "count", "steps"),
    [
        (20, 4, [4, 8, 12, 16]),  # with the final policy at 20: five equal parts
        (10, 1, [5]),
        (6, 4, [1, 2, 4, 5]),  # 1.2, 2.4, 3.6, 4.8 rounded
        (4, 4, [1, 2, 3]),  # 0.8, 1.6, 2.4, 3.2 rounded: step 2 once
        (1, 3, []),  # the only step is the final policy's
        (20, 0, []),
    ],
)
def test_snapshots_are_evenly_spaced_before_the_last_step(num_steps, count, steps):
    assert checkpoint.snapshot_steps(num_steps, count) == steps


def written_run(directory: Path, steps: list[int], final: int) -> None:
    """A finished run's snapshots folder, as ppo.train leaves it (the weights stand in as one file each)."""
    entries = []
    for step in steps:
        (directory / f"step_{step}" / "model").mkdir(parents=True)
        (directory / f"step_{step}" / "model" / "model.safetensors").write_text("weights")
        entries.append({"step": step, "episode": 8 * step, "path": f"step_{step}/model"})
    checkpoint.close_snapshots(directory, entries, final, 8 * final)


def test_a_resume_keeps_the_snapshots_up_to_its_checkpoint_and_lists_each_once(tmp_path):
    directory = tmp_path / "snapshots"
    written_run(directory, [1, 2, 4, 5], final=6)
    (directory / "step_6" / "model").mkdir(parents=True)  # a kill in the middle of a save: never listed

    kept = checkpoint.keep_snapshots(directory, 4)  # resumed from checkpoint-4
    assert [s["step"] for s in kept] == [1, 2, 4]
    assert sorted(p.name for p in directory.glob("step_*")) == ["step_1", "step_2", "step_4"]
    index = checkpoint.read_snapshots(directory)
    assert index == {"snapshots": kept}  # no "final": the run is not finished again yet

    written = checkpoint.add_snapshot(directory, kept, 5, 40)
    written = checkpoint.add_snapshot(directory, written, 5, 40)  # the same step again replaces it
    assert [(s["step"], s["episode"], s["path"]) for s in written] == [
        (1, 8, "step_1/model"),
        (2, 16, "step_2/model"),
        (4, 32, "step_4/model"),
        (5, 40, "step_5/model"),
    ]
    checkpoint.close_snapshots(directory, written, 6, 48)
    assert json.loads((directory / "index.json").read_text())["final"] == {"step": 6, "episode": 48}


def test_a_fresh_start_drops_an_earlier_runs_snapshots(tmp_path):
    directory = tmp_path / "snapshots"
    written_run(directory, [4, 8], final=10)
    assert checkpoint.keep_snapshots(directory, 0) == []
    assert not list(directory.glob("step_*")) and "final" not in checkpoint.read_snapshots(directory)
    assert checkpoint.keep_snapshots(tmp_path / "none", 0) == []  # no folder: nothing made
    assert not (tmp_path / "none").exists()


def test_the_evaluation_reads_only_a_finished_runs_snapshots(tmp_path):
    from evaluation.evaluate import EvalConfig, evaluate_snapshots

    directory = tmp_path / "snapshots"
    written_run(directory, [1, 2], final=3)
    checkpoint.keep_snapshots(directory, 2)  # resumed, then killed again: the index has no "final"
    config = EvalConfig(prompts="p.jsonl", report_to="none")
    assert evaluate_snapshots(directory, [], None, [], None, [], config, None) == []


def test_bad_eval_settings_for_snapshots_say_what_to_change():
    from evaluation.evaluate import EvalConfig

    with pytest.raises(ValueError, match=r"snapshot_prompts must be 0 \(no snapshots\), a number of prompts"):
        EvalConfig(prompts="p.jsonl", snapshot_prompts=-1)


SNAPSHOTS = [
    {"step": 4, "episode": 128, "kl_to_reference": -0.01, "gold_score": 0.30, "reward_mean": 0.1},
    {"step": 8, "episode": 256, "kl_to_reference": 1.0, "gold_score": 0.40, "reward_mean": 0.2},
    {"step": 10, "episode": 320, "final": True, "kl_to_reference": 4.0, "gold_score": 0.45, "reward_mean": 0.3},
]
BEST_OF_N = [{"n": 1, "kl": 0.0, "gold_score": 0.25}, {"n": 4, "kl": math.log(4) - 0.75, "gold_score": 0.35}]
POLICIES = {
    "PPO": {"kl_to_reference": 4.2, "gold_score": 0.46},
    "DPO": {"kl_to_reference": 2.0, "gold_score": 0.38},
}


def test_the_frontier_draws_the_snapshots_as_a_line_in_ppos_colour_ending_at_the_final_policy(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    draw_frontier(ax, BEST_OF_N, POLICIES, "gold_score", SNAPSHOTS)
    lines = {line.get_label(): line for line in ax.get_lines()}
    course = lines["PPO over training (snapshots)"]
    # sqrt(KL), a sampled estimate below 0 drawn at 0; the gold scores; the final policy last.
    assert list(course.get_xdata()) == pytest.approx([0.0, 1.0, 2.0])
    assert list(course.get_ydata()) == pytest.approx([0.30, 0.40, 0.45])
    assert course.get_color() == lines["PPO policy"].get_color() != lines["DPO policy"].get_color()
    assert {"step 4", "step 8", "final"} <= {text.get_text() for text in ax.texts}
    plt.close(fig)

    with_line = plot_frontier(tmp_path / "with.png", BEST_OF_N, POLICIES, "gold_score", SNAPSHOTS)
    without = plot_frontier(tmp_path / "without.png", BEST_OF_N, POLICIES, "gold_score")
    assert with_line.read_bytes()[:4] == b"\x89PNG" and with_line.read_bytes() != without.read_bytes()


def test_the_snapshots_sentence_gives_each_points_score_and_kl():
    assert snapshots_sentence(SNAPSHOTS, "reward_mean", 32) == (
        "PPO over training, reward-model score on the first 32 prompts: step 4: 0.100 at KL -0.01, "
        "step 8: 0.200 at KL 1.00, step 10 (final): 0.300 at KL 4.00."
    )
