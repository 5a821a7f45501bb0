"""Evaluation of the policy: ``make eval`` (``python -m evaluation.evaluate --config configs/eval.yaml``).

On the held-out evaluation prompts, the SFT policy and the PPO policy each sample a response per prompt. Reported
for both: the reward model's mean score, the PPO policy's win rate against SFT by the reward model, the KL to the
reference (the SFT model), estimated on the samples as the mean of sum_t [log pi(y_t) - log ref(y_t)], response
length, EOS rate, and the gold rubric's score when one is set (the pipeline config names it). Then best-of-n from
the SFT policy with the reward model as the picker, for each n of ``best_of_n`` (``evaluation.best_of_n``); PPO's
snapshots over training (``snapshots`` in the PPO config) on the first ``snapshot_prompts`` prompts; and gold score
against sqrt(KL) for best-of-n, PPO, its snapshots and, when ``make dpo`` trained one, the DPO policy (``dpo.train``).
Writes ``runs/<run>/eval/``: summary.json, report.md with PNG plots, samples.jsonl; and logs to W&B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from evaluation import best_of_n as bon
from evaluation.best_of_n import win_rate
from pipeline.lib import runs
from pipeline.lib.errors import exit_with
from pipeline.lib.prompts import load_prompts, user_message
from pipeline.lib.rubric import load_rubric
from pipeline.lib.stage import Stage, parse_configs
from pipeline.lib.tables import write_jsonl

# PPO's outputs read as PPO wrote and scored them: its snapshot index, its reward models with their statistics, its
# response lengths. The only stage the evaluation imports, and only these modules (contracts in pyproject.toml).
from ppo import checkpoint, rewards
from ppo.shaping import response_lengths


@dataclass
class EvalConfig:
    run: str = field(default=runs.DEFAULT_RUN, metadata={"help": "Run name: outputs go to <runs_dir>/<run>/eval/."})
    runs_dir: str = "runs"
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The start (SFT) policy, also the reference; default: the run's SFT model."}
    )
    ppo_model_path: str | None = field(default=None, metadata={"help": "Default: the run's PPO model."})
    dpo_model_path: str | None = field(
        default=None, metadata={"help": "A DPO policy evaluated too; default: the run's, when `make dpo` made one."}
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Default: the run's reward model (an ensemble's members' mean score)."}
    )
    prompts: str | None = field(default=None, metadata={"help": "Held-out prompts: a file with a 'prompt' column."})
    num_prompts: int | None = None
    max_new_tokens: int = 128
    # Sampling at temperature 1 draws from the policy's own distribution, which the KL estimate needs.
    temperature: float = 1.0
    batch_size: int = 16
    max_kl: float = field(default=20.0, metadata={"help": "The PPO policy's KL to the reference stays below it."})
    rubric: str | None = field(
        default=None, metadata={"help": "Gold rubric module:function (gold_score); default none."}
    )
    best_of_n: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16],
        metadata={"help": "Best-of-n from the SFT policy, picked by the reward model, for each n (empty: none)."},
    )
    best_of_n_prompts: int | None = field(
        default=32, metadata={"help": "Prompts best-of-n samples max(best_of_n) replies for (None: all)."}
    )
    snapshot_prompts: int | None = field(
        default=32,
        metadata={"help": "Prompts (the first ones) each PPO snapshot is evaluated on (None: all; 0: no snapshots)."},
    )
    seed: int = 0
    report_to: str | None = "wandb"

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("Set prompts: a file of held-out prompts (a 'prompt' column) to compare the policies on.")
        if any(n < 1 for n in self.best_of_n):
            raise ValueError(f"best_of_n: every n must be at least 1, got {self.best_of_n}.")
        if self.best_of_n_prompts is not None and self.best_of_n_prompts < 1:
            raise ValueError(f"best_of_n_prompts must be at least 1 (or null: all), got {self.best_of_n_prompts}.")
        if self.snapshot_prompts is not None and self.snapshot_prompts < 0:
            raise ValueError(
                f"snapshot_prompts must be 0 (no snapshots), a number of prompts, or null (all), got "
                f"{self.snapshot_prompts}."
            )


def load_policy(path: str | Path, device: str | torch.device) -> PreTrainedModel:
    """A causal LM on ``device``, in eval mode: the reference and each policy compared with it."""
    model = AutoModelForCausalLM.from_pretrained(path)
    # transformers decorates PreTrainedModel.to with functools.wraps, which typeshed types as a callable that binds
    # no self: mypy takes the device for the model.
    return model.to(device).eval()  # type: ignore[arg-type]


def sequence_logprobs(model, sequences: torch.Tensor, context_length: int, pad_id: int) -> torch.Tensor:
    """log p(response | prompt) under ``model`` for each left-padded prompt + right-padded response."""
    attention = sequences != pad_id
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(
            input_ids=sequences.masked_fill(~attention, 0), attention_mask=attention, position_ids=positions
        ).logits
    logits = logits[:, context_length - 1 : -1].float()
    targets = sequences[:, context_length:]
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * attention[:, context_length:]).sum(dim=1)


def sample_policy(model, tokenizer, prompts: list[list[dict]], config: EvalConfig) -> list[tuple[torch.Tensor, int]]:
    """Batches of (prompt + response) token ids, and each batch's context length."""
    out = []
    starts = range(0, len(prompts), config.batch_size)
    for start in tqdm(starts, desc=f"sampling {getattr(model, 'name_or_path', '')}".strip(), unit="batch"):
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + config.batch_size]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        torch.manual_seed(config.seed + start)
        with torch.no_grad():
            seqs = model.generate(
                **batch,
                do_sample=True,
                temperature=config.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        # Everything after the first EOS becomes padding, as the reward model and the KL estimate must see it.
        responses = seqs[:, batch["input_ids"].shape[1] :]
        lengths = response_lengths(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        keep = torch.arange(responses.shape[1], device=responses.device)[None, :] < lengths[:, None]
        seqs[:, batch["input_ids"].shape[1] :] = responses.masked_fill(~keep, tokenizer.pad_token_id)
        out.append((seqs, batch["input_ids"].shape[1]))
    return out


def reward_scores(
    reward_models: list[rewards.RewardModel],
    sequences: torch.Tensor,
    context: int,
    pad_id: int,
    prompts: list[list[dict]],
    texts: list[str],
) -> list[float]:
    """The reward model's raw score of each sequence; an ensemble's is its members' mean."""
    scores = [rewards.score_with(rm, sequences, pad_id, prompts, texts, context) for rm in reward_models]
    return torch.stack(scores).mean(dim=0).tolist()


def evaluate_policy(name: str, model, ref, reward_models, tokenizer, prompt_rows, config, rubric) -> dict[str, Any]:
    rows = []
    prompts = [r["prompt"] for r in prompt_rows]
    done = 0
    for seqs, context in sample_policy(model, tokenizer, prompts, config):
        logp = sequence_logprobs(model, seqs, context, tokenizer.pad_token_id)
        ref_logp = sequence_logprobs(ref, seqs, context, tokenizer.pad_token_id)
        responses = seqs[:, context:]
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = reward_scores(
            reward_models, seqs, context, tokenizer.pad_token_id, prompts[done : done + len(seqs)], texts
        )
        done += len(seqs)
        lengths = response_lengths(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        for i in range(len(seqs)):
            rows.append(
                {
                    "response": tokenizer.decode(responses[i], skip_special_tokens=True),
                    "score": scores[i],
                    "kl": (logp[i] - ref_logp[i]).item(),
                    "length": int(lengths[i]),
                    "eos": bool((responses[i] == tokenizer.eos_token_id).any()),
                }
            )
    for row, prompt in zip(rows, prompt_rows, strict=True):
        row["prompt_id"] = prompt["prompt_id"]
        if rubric is not None:
            row["gold"] = rubric(user_message(prompt["prompt"]), row["response"])
    return {"name": name, "summary": policy_summary(rows), "rows": rows}


def policy_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means over a policy's samples: reward-model score, KL to the reference, length, EOS rate, gold (if scored)."""
    n = len(rows)
    summary = {
        "reward_mean": sum(r["score"] for r in rows) / n,
        "kl_to_reference": sum(r["kl"] for r in rows) / n,
        "response_length": sum(r["length"] for r in rows) / n,
        "eos_rate": sum(r["eos"] for r in rows) / n,
    }
    if "gold" in rows[0]:
        summary["gold_score"] = sum(r["gold"] for r in rows) / n
    return summary


def evaluate_snapshots(
    directory: Path, ppo_rows, ref, reward_models, tokenizer, prompt_rows, config: EvalConfig, rubric
) -> list[dict[str, Any]]:
    """PPO's course over training: each snapshot of a finished PPO run (``ppo.checkpoint``) on the first
    ``snapshot_prompts`` prompts, then the final policy on the same prompts (its own samples of them); [] when the
    run saved none."""
    index = checkpoint.read_snapshots(directory)
    if "final" not in index or not index["snapshots"] or config.snapshot_prompts == 0:
        return []
    rows = prompt_rows[: config.snapshot_prompts]
    points = []
    for entry in index["snapshots"]:
        model = load_policy(directory / entry["path"], ref.device)
        result = evaluate_policy(
            f"ppo step {entry['step']}", model, ref, reward_models, tokenizer, rows, config, rubric
        )
        points.append({"step": entry["step"], "episode": entry["episode"], **result["summary"]})
        del model
    final = {**index["final"], "final": True, **policy_summary(ppo_rows[: len(rows)])}
    return [*points, final]


def best_of_n_samples(ref, reward_models, tokenizer, prompt_rows, config: EvalConfig, rubric) -> list[list[dict]]:
    """max(best_of_n) samples of the SFT policy for each of the first ``best_of_n_prompts`` prompts, each with its
    reward-model score, length and gold score."""
    n = max(config.best_of_n)
    rows = prompt_rows[: config.best_of_n_prompts]
    prompts = [r["prompt"] for r in rows for _ in range(n)]
    flat, done = [], 0
    for seqs, context in sample_policy(ref, tokenizer, prompts, config):
        responses = seqs[:, context:]
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = reward_scores(
            reward_models, seqs, context, tokenizer.pad_token_id, prompts[done : done + len(seqs)], texts
        )
        lengths = response_lengths(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        flat += [
            {"response": t, "score": s, "length": int(n_)} for t, s, n_ in zip(texts, scores, lengths, strict=True)
        ]
        done += len(seqs)
    samples = [flat[i * n : (i + 1) * n] for i in range(len(rows))]
    if rubric is not None:
        for row, per_prompt in zip(rows, samples, strict=True):
            for sample in per_prompt:
                sample["gold"] = rubric(user_message(row["prompt"]), sample["response"])
    return samples


def best_of_n_lines(metrics: dict) -> list[str]:
    """The report's best-of-n table, plot and verdict."""
    rows = metrics.get("best_of_n") or []
    if not rows:
        return []
    gold = "gold_score" in rows[0]
    head = "| n | KL (log n - (n-1)/n) | reward | " + ("gold | gold win rate vs SFT | " if gold else "") + "length |"
    lines = [
        "## Best-of-n from the SFT policy",
        "",
        f"{metrics['best_of_n_prompts']} prompts, {max(r['n'] for r in rows)} samples each; the reward model picks.",
        "",
        head,
        "|" + " --- |" * (head.count("|") - 1),
    ]
    for r in rows:
        cells = [r["n"], f"{r['kl']:.3f}", f"{r['reward_mean']:.3f}"]
        cells += [f"{r['gold_score']:.3f}", f"{r['gold_win_rate_vs_sft']:.1%}"] if gold else []
        lines.append("| " + " | ".join(map(str, [*cells, f"{r['response_length']:.1f}"])) + " |")
    return [*lines, "", metrics["best_of_n_verdict"], "", "![score against KL](kl_frontier.png)", ""]


def write_report(out_dir: Path, sft: dict, ppo: dict, metrics: dict, config: EvalConfig) -> Path:
    """report.md with two PNG plots: reward-model score distributions, and the headline figures side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([r["score"] for r in sft["rows"]], bins=20, alpha=0.6, label="SFT")
    ax.hist([r["score"] for r in ppo["rows"]], bins=20, alpha=0.6, label="PPO")
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "reward_scores.png", dpi=120)
    plt.close(fig)

    keys = [k for k in ("reward_mean", "gold_score", "eos_rate") if k in sft["summary"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    xs = range(len(keys))
    ax.bar([x - width / 2 for x in xs], [sft["summary"][k] for k in keys], width, label="SFT")
    ax.bar([x + width / 2 for x in xs], [ppo["summary"][k] for k in keys], width, label="PPO")
    ax.set_xticks(list(xs), keys)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "sft_vs_ppo.png", dpi=120)
    plt.close(fig)

    lines = [
        f"# Evaluation of run `{config.run}`",
        "",
        f"{metrics['num_prompts']} held-out prompts, one sample each at temperature {config.temperature}. "
        + (
            f"Gold scores by the rubric `{metrics['gold_rubric']}`."
            if metrics["gold_rubric"]
            else "No gold rubric: the scores are the reward model's alone."
        ),
        "",
        "| | SFT | PPO |",
        "| --- | --- | --- |",
    ]
    for key in sft["summary"]:
        lines.append(f"| {key} | {sft['summary'][key]:.4f} | {ppo['summary'][key]:.4f} |")
    lines += [
        "",
        f"PPO wins against SFT by the reward model on **{metrics['win_rate_ppo_vs_sft']:.1%}** of prompts"
        + (
            f", and by the gold rubric on **{metrics['gold_win_rate_ppo_vs_sft']:.1%}**."
            if "gold_win_rate_ppo_vs_sft" in metrics
            else "."
        ),
        *(
            [
                f"DPO (`make dpo`): reward {metrics['dpo']['reward_mean']:.4f}, KL {metrics['dpo']['kl_to_reference']:.3f}"
                + (f", gold {metrics['dpo']['gold_score']:.4f}" if "gold_score" in metrics["dpo"] else "")
                + f"; it wins against SFT by the reward model on {metrics['win_rate_dpo_vs_sft']:.1%} of prompts.",
            ]
            if "dpo" in metrics
            else []
        ),
        f"KL of the PPO policy to the reference: {metrics['ppo']['kl_to_reference']:.3f} "
        f"(bound {config.max_kl}: {'within' if metrics['kl_within_bound'] else 'EXCEEDED'}).",
        *([metrics["ppo_snapshots_summary"]] if "ppo_snapshots_summary" in metrics else []),
        "",
        "![reward-model scores](reward_scores.png)",
        "",
        "![SFT vs PPO](sft_vs_ppo.png)",
        "",
        *best_of_n_lines(metrics),
        "## Samples",
        "",
    ]
    for a, b in list(zip(sft["rows"], ppo["rows"], strict=True))[:5]:
        lines += [
            f"**{a['prompt_id']}**",
            "",
            "SFT:",
            "```",
            a["response"],
            "```",
            "PPO:",
            "```",
            b["response"],
            "```",
            "",
        ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(config: EvalConfig) -> dict[str, Any]:
    stage = Stage("eval", config.run, config.runs_dir, [config], config.report_to)
    runs.require_path("prompts", config.prompts)
    sft_path = runs.stage_output(config.run, "sft", config.runs_dir, config.model_name_or_path)
    ppo_path = runs.stage_output(config.run, "ppo", config.runs_dir, config.ppo_model_path)
    runs.require_path("dpo_model_path", config.dpo_model_path)
    dpo_path = Path(config.dpo_model_path or runs.stage_dir(config.run, "dpo", config.runs_dir) / "model")
    rm_paths = runs.reward_models(config.run, config.runs_dir, config.reward_model_path)
    assert config.prompts is not None  # __post_init__ refused a config without them
    prompt_rows, prompts_path = load_prompts(config.prompts, config.num_prompts), config.prompts
    rubric = load_rubric(config.rubric)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(sft_path, padding_side="left")
    ref = load_policy(sft_path, device)
    policy = load_policy(ppo_path, device)
    reward_models = rewards.load_reward_models(rm_paths, None, False, tokenizer, torch.float32)
    for rm in reward_models:
        rm.model.to(device)  # type: ignore[arg-type]  # PreTrainedModel.to's functools.wraps, as in load_policy

    sft = evaluate_policy("sft", ref, ref, reward_models, tokenizer, prompt_rows, config, rubric)
    ppo = evaluate_policy("ppo", policy, ref, reward_models, tokenizer, prompt_rows, config, rubric)
    trained = {"PPO": ppo}
    if dpo_path.is_dir():
        dpo_policy = load_policy(dpo_path, device)
        trained["DPO"] = evaluate_policy("dpo", dpo_policy, ref, reward_models, tokenizer, prompt_rows, config, rubric)
        del dpo_policy
    metrics = {
        "num_prompts": len(prompt_rows),
        "gold_rubric": config.rubric,
        "sft": sft["summary"],
        "ppo": ppo["summary"],
        "win_rate_ppo_vs_sft": win_rate([r["score"] for r in ppo["rows"]], [r["score"] for r in sft["rows"]]),
        "kl_within_bound": ppo["summary"]["kl_to_reference"] < config.max_kl,
    }
    snapshot_dir = ppo_path.parent / "snapshots"  # where ppo.train writes them, beside its model
    snapshots = evaluate_snapshots(
        snapshot_dir, ppo["rows"], ref, reward_models, tokenizer, prompt_rows, config, rubric
    )
    key = "gold_score" if rubric is not None else "reward_mean"
    if snapshots:
        metrics["ppo_snapshots"] = snapshots
        metrics["ppo_snapshot_prompts"] = len(prompt_rows[: config.snapshot_prompts])
        metrics["ppo_snapshots_summary"] = bon.snapshots_sentence(snapshots, key, metrics["ppo_snapshot_prompts"])
    for name, result in trained.items():  # PPO's own figures are above; DPO's, when there is one, the same way
        tag = name.lower()
        metrics[tag] = result["summary"]
        metrics[f"win_rate_{tag}_vs_sft"] = win_rate(
            [r["score"] for r in result["rows"]], [r["score"] for r in sft["rows"]]
        )
        if rubric is not None:
            golds = [r["gold"] for r in result["rows"]], [r["gold"] for r in sft["rows"]]
            metrics[f"gold_win_rate_{tag}_vs_sft"] = win_rate(*golds)
    if config.best_of_n:
        samples = best_of_n_samples(ref, reward_models, tokenizer, prompt_rows, config, rubric)
        ns = sorted(set(config.best_of_n))
        metrics["best_of_n"] = bon.summarise(ns, samples, sft["rows"][: len(samples)])
        metrics["best_of_n_prompts"] = len(samples)
        summaries = {name: result["summary"] for name, result in trained.items()}
        metrics["best_of_n_verdict"] = bon.verdict(metrics["best_of_n"], summaries, key)
        bon.plot_frontier(stage.dir / "kl_frontier.png", metrics["best_of_n"], summaries, key, snapshots)
    pairs = zip(sft["rows"], ppo["rows"], strict=True)
    write_jsonl(stage.dir / "samples.jsonl", ({"prompt_id": a["prompt_id"], "sft": a, "ppo": b} for a, b in pairs))
    report = write_report(stage.dir, sft, ppo, metrics, config)

    flat = {f"{name}/{k}": v for name in ("sft", "ppo") for k, v in metrics[name].items()}
    stage.tracker.log({**flat, "win_rate_ppo_vs_sft": metrics["win_rate_ppo_vs_sft"]})
    if snapshots:
        columns = ["step", "episode", "kl_to_reference", "reward_mean", *(["gold_score"] if rubric else [])]
        stage.tracker.log_table("ppo_snapshots", columns, [[p[c] for c in columns] for p in snapshots])
    stage.tracker.log_table(
        "samples",
        ["prompt_id", "sft", "sft_score", "ppo", "ppo_score"],
        [
            [a["prompt_id"], a["response"], a["score"], b["response"], b["score"]]
            for a, b in zip(sft["rows"], ppo["rows"], strict=True)
        ][:32],
    )
    gold = f" | gold {sft['summary']['gold_score']:.3f} -> {ppo['summary']['gold_score']:.3f}" if rubric else ""
    return stage.finish(
        metrics=metrics,
        inputs={
            "sft_model": sft_path,
            "ppo_model": ppo_path,
            **({"dpo_model": dpo_path} if "DPO" in trained else {}),
            **({"ppo_snapshots": snapshot_dir / checkpoint.SNAPSHOT_INDEX} if snapshots else {}),
            **(
                {"reward_model": rm_paths[0]}
                if len(rm_paths) == 1
                else {f"reward_model_{i}": path for i, path in enumerate(rm_paths)}
            ),
            "prompts": prompts_path,
        },
        outputs={"report": report, "samples": stage.dir / "samples.jsonl"},
        headline=f"reward {sft['summary']['reward_mean']:.3f} -> {ppo['summary']['reward_mean']:.3f} | win rate "
        f"{metrics['win_rate_ppo_vs_sft']:.1%} | KL {ppo['summary']['kl_to_reference']:.3f}{gold}",
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse_configs((EvalConfig,))))
