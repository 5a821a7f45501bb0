"""GPU figures: SFT and PPO stages on a 0.5B-parameter Llama-shaped model with random weights, when a GPU is present.

The model is built from a config (no download): hidden 1536, 18 layers, 12 heads, MLP 4096, with the embedded
tokenizer's 4k vocabulary, about 0.52B parameters. SFT runs the project's stage on the demo data in bf16 (one process
per GPU, and under ZeRO-2 and ZeRO-3); PPO runs the project's stage with a stand-in reward model built from the same
model. Reported: tokens/s, MFU, peak GPU memory (torch's max allocated, per rank), episodes/s.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s, with the model FLOPs per trained token of PaLM
(Chowdhery et al., 2022, app. B): 6 N + 12 L H T, N the parameters without the input embedding (the tied LM head
counts), L layers, H hidden size, T the mean sequence length; real (non-padding) tokens only. The peak comes from
the table below by device name, or from BENCH_PEAK_TFLOPS.
"""

from __future__ import annotations

import os

from bench.core import (
    CaseResult,
    Comparison,
    Shape,
    Workspace,
    check_target,
    compare,
    harness_cmd,
    random_llama,
    run_rounds,
)
from bench.ppo import PPORunner
from bench.sft import stage_args, training_flags
from pipeline.lib.launch import accelerate_arguments

TARGET_MFU = (">=", 0.35)
# Peak dense bf16 tensor-core FLOP/s (no sparsity), from the vendors' data sheets; first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756),
    ("H100", 989),
    ("H200", 989),
    ("H800", 989),
    ("B200", 2250),
    ("A100", 312),
    ("A800", 312),
    ("L40S", 362),
    ("L40", 181),
    ("A10G", 70),
    ("A10", 125),
    ("L4", 121),
)


MODEL_05B = Shape(hidden=1536, layers=18, heads=12, intermediate=4096)


def peak_flops(device_name: str) -> float | None:
    if os.environ.get("BENCH_PEAK_TFLOPS"):
        return float(os.environ["BENCH_PEAK_TFLOPS"]) * 1e12
    for name, tflops in PEAK_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops * 1e12
    return None


def flops_per_token(shape: Shape, vocab: int, mean_seq_len: float) -> float:
    h, layer = shape.hidden, shape.layers
    kv = h  # as many key/value heads as query heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape.intermediate
    n = layer * per_layer + vocab * h  # without the input embedding; the tied LM head is a real matmul
    return 6 * n + 12 * layer * h * mean_seq_len


def run(ws: Workspace) -> CaseResult:
    import torch

    if not torch.cuda.is_available():
        return CaseResult(
            "gpu", "GPU: SFT and PPO on a 0.5B model", skipped="no CUDA GPU here (torch.cuda.is_available() is False)"
        )
    return measure(ws, MODEL_05B)


def measure(ws: Workspace, shape: Shape) -> CaseResult:
    """The GPU case for a model of ``shape`` (also runs on CPU with a small shape, to check the code path)."""
    import torch

    result = CaseResult("gpu", "GPU: SFT and PPO on a 0.5B-parameter Llama-shaped model (random weights)")
    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name() if gpus else "cpu"
    peak = peak_flops(device) if gpus else None
    model = random_llama(ws, shape)
    steps, skip = (6, 2) if ws.quick else (20, 5)
    flags = training_flags(steps, batch_size=64 if gpus else 8, max_length=512, bf16=bool(gpus))
    result.settings = {
        "model": f"Llama {shape}",
        "device": device,
        "gpus": gpus,
        "peak_flops": peak,
        "sft_flags": " ".join(flags),
        "mfu": "6N + 12LHT FLOPs per real token (PaLM)",
    }
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model).vocab_size

    def sft(name: str, launch: list[str] | None):
        def go(round_: int) -> dict[str, float]:
            run_dir = ws.run_dir("gpu", name, round_)
            args = stage_args(ws, run_dir, flags, model=str(model))
            cmd = harness_cmd("pipeline.sft", args, run_dir / "metrics", launch=launch)
            out = ws.measure(cmd, run_dir, skip, timeout=1800)
            mean_len = out["tokens_per_step"] / (out["samples_per_s"] * out["step_s"])
            out["model_tflops_per_s"] = out["tokens_per_s"] * flops_per_token(shape, vocab, mean_len) / 1e12
            if peak:
                out["mfu"] = out["model_tflops_per_s"] * 1e12 / (peak * max(gpus, 1))
            return out

        return go

    processes = max(gpus, 1)
    variants = {"sft_1proc": sft("sft_1proc", None)}
    if gpus:
        variants["sft_zero2"] = sft("sft_zero2", accelerate_arguments(processes, 2, threads=1))
        variants["sft_zero3"] = sft("sft_zero3", accelerate_arguments(processes, 3, threads=1))
    runner = PPORunner(
        ws, "gpu", str(model), 2 if ws.quick else 4, 1, batch=16, accumulation=2, response_length=64, ppo_epochs=2
    )
    variants["ppo_1proc"] = runner.stage("ppo_1proc", ["--bf16", "true" if gpus else "false"])
    run_rounds(result, variants, **ws.rounds())
    sft_runs = result.runs.get("sft_1proc", [])
    if sft_runs and peak:
        check_target(result, "SFT MFU, 1 process", sorted(r["mfu"] for r in sft_runs)[len(sft_runs) // 2], *TARGET_MFU)
    for zero in ("sft_zero2", "sft_zero3"):
        if zero in result.runs:
            compare(result, Comparison(f"{zero} / no DeepSpeed tokens/s", "tokens_per_s", zero, "sft_1proc"))
    if not peak and gpus:
        result.notes.append(f"No peak FLOP/s known for {device}: set BENCH_PEAK_TFLOPS to get the MFU.")
    return result
