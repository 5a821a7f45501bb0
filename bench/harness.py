"""Runs a training entry point unchanged and records what the benchmarks compare, the same way for every program.

    python -m bench.harness --metrics FILE -m MODULE [ARGS...]

The module (a project stage such as ``pipeline.sft``, or a plain-TRL baseline under ``bench/baselines``) runs as
``__main__``, as ``python -m MODULE ARGS`` would run it. Before it starts, the harness adds a callback to every
trainer (``transformers.Trainer`` and TRL's PPO loop both build a ``CallbackHandler``) that timestamps each optimiser
step, and wraps a few library functions that both programs call:

- ``Trainer.training_step``: the real (non-padding) tokens and the examples of each batch (SFT, reward model);
- TRL PPO's ``batch_generation``, ``forward`` (on the reference model: reference log-probs) and ``get_reward`` (value
  and reward model): the time of each PPO phase, identical for the project's stage and the plain script.

At exit each process writes ``FILE.rank<R>.json``: per-step timestamps and counts, phase times, peak RSS, the number
of parameters, and the peak GPU memory when there is a GPU. Nothing here changes what the program computes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path


class Recorder:
    def __init__(self):
        self.training = False
        self.t_start = time.perf_counter()
        self.t_train_begin: float | None = None
        self.t_train_end: float | None = None
        self.steps: list[dict] = []
        self.pending = defaultdict(float)  # counts and phase times of the step in progress
        self.num_parameters: int | None = None
        self.trainable_parameters: int | None = None
        self.depth = defaultdict(int)  # a phase inside the same phase (re-entrant calls) counts once

    @contextmanager
    def phase(self, name: str):
        if not self.training or self.depth[name]:
            yield
            return
        self.depth[name] += 1
        start = _now()
        try:
            yield
        finally:
            self.pending[f"{name}_s"] += _now() - start
            self.depth[name] -= 1

    def step_end(self, state) -> None:
        row = {"t": _now() - self.t_start, "step": state.global_step, "episode": getattr(state, "episode", 0)}
        row.update(self.pending)
        self.steps.append(row)
        self.pending = defaultdict(float)

    def dump(self, path: Path) -> None:
        import torch

        rank = int(os.environ.get("RANK", 0))
        out = {
            "rank": rank,
            "world_size": int(os.environ.get("WORLD_SIZE", 1)),
            "train_begin_t": self.t_train_begin,
            "train_end_t": self.t_train_end,
            "steps": self.steps,
            "num_parameters": self.num_parameters,
            "trainable_parameters": self.trainable_parameters,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wall_s": time.perf_counter() - self.t_start,
        }
        if torch.cuda.is_available():
            out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
            out["cuda_device"] = torch.cuda.get_device_name()
        Path(f"{path}.rank{rank}.json").write_text(json.dumps(out))


RECORDER = Recorder()


def _now() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _count_batch(inputs, pad_token_id: int | None) -> None:
    """Real tokens and sequences of one micro-batch, as TRL's SFTTrainer counts its tokens. (A reward-model batch
    of B pairs is 2B sequences: the chosen responses, then the rejected ones.)"""
    if not RECORDER.training:
        return
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        RECORDER.pending["tokens"] += float(mask.sum())
        RECORDER.pending["padded_tokens"] += float(mask.numel())
        RECORDER.pending["rows"] += float(mask.shape[0])
    elif "position_ids" in inputs:  # packed: a new example wherever the position restarts
        positions = inputs["position_ids"]
        # Packed rows (pipeline.sft.PackedRowsCollator) end in padding: pad tokens at position 0 after the last
        # example. (A flattened padding-free batch is one row with none.)
        starts = positions == 0
        padding = starts & (inputs["input_ids"] == pad_token_id)
        padding = padding.flip(-1).cumprod(-1).flip(-1).bool()  # only the trailing run of each row
        RECORDER.pending["tokens"] += float(positions.numel() - padding.sum())
        RECORDER.pending["padded_tokens"] += float(positions.numel())
        RECORDER.pending["rows"] += float((starts & ~padding).sum())


def install() -> None:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import CallbackHandler

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            RECORDER.training = True
            RECORDER.t_train_begin = _now() - RECORDER.t_start
            if model is not None:  # ZeRO-3 leaves each rank a shard; ds_numel is the whole parameter's size
                sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
                RECORDER.num_parameters = sum(n for n, _ in sizes)
                RECORDER.trainable_parameters = sum(n for n, trainable in sizes if trainable)

        def on_step_end(self, args, state, control, **kwargs):
            RECORDER.step_end(state)

        def on_train_end(self, args, state, control, **kwargs):
            RECORDER.training = False
            RECORDER.t_train_end = _now() - RECORDER.t_start

    handler_init = CallbackHandler.__init__

    def init_with_timer(self, callbacks, *args, **kwargs):
        handler_init(self, callbacks, *args, **kwargs)
        self.add_callback(StepTimer())

    CallbackHandler.__init__ = init_with_timer

    training_step = Trainer.training_step

    def counted_training_step(self, model, inputs, *args, **kwargs):
        _count_batch(inputs, getattr(self.processing_class, "pad_token_id", None))
        return training_step(self, model, inputs, *args, **kwargs)

    Trainer.training_step = counted_training_step


def install_ppo() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import ppo_trainer

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            with RECORDER.phase(name):
                return fn(*args, **kwargs)

        return wrapper

    ppo_trainer.batch_generation = timed("generation", ppo_trainer.batch_generation)
    forward = ppo_trainer.forward

    def phase_forward(model, *args, **kwargs):
        # The loop calls this one function for the reference log-probs in the rollout and for the policy-and-value
        # forward of every micro-batch it optimises: only the first is the reference phase (the second was once
        # counted there too, which moved 11 s a step of TRL's optimisation on SmolLM2 into its reference phase).
        if hasattr(getattr(model, "module", model), "critic_backbone"):
            return forward(model, *args, **kwargs)
        with RECORDER.phase("reference"):
            return forward(model, *args, **kwargs)

    ppo_trainer.forward = phase_forward
    get_reward = ppo_trainer.get_reward

    def phase_get_reward(model, *args, **kwargs):
        # The loop scores with the reward model and estimates values with the value model through this one function.
        with RECORDER.phase("scoring" if getattr(model, "_bench_reward_model", False) else "value"):
            return get_reward(model, *args, **kwargs)

    ppo_trainer.get_reward = phase_get_reward
    trainer_init = ppo_trainer.PPOTrainer.__init__

    def init_marking_reward_model(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        self.reward_model._bench_reward_model = True

    ppo_trainer.PPOTrainer.__init__ = init_marking_reward_model


def main() -> None:
    # Everything after `-m MODULE` belongs to the module, so its flags never clash with the harness's.
    split = sys.argv.index("-m") if "-m" in sys.argv else len(sys.argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", required=True, help="Prefix of the per-rank metrics files.")
    parser.add_argument("--ppo", action="store_true", help="Also time the phases of TRL's PPO loop.")
    args = parser.parse_args(sys.argv[1:split])
    if split + 1 >= len(sys.argv):
        parser.error("give the module to run: -m MODULE [ARGS...]")
    args.module, rest = sys.argv[split + 1], sys.argv[split + 2 :]
    install()
    if args.ppo:
        install_ppo()
    sys.argv = [args.module, *rest]
    try:
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    finally:
        RECORDER.dump(Path(args.metrics))


if __name__ == "__main__":
    main()
