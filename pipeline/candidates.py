"""Candidates for labeling: ``make candidates`` (``accelerate launch -m pipeline.candidates --config ...``).

The SFT model (by default the run's) samples K responses per prompt of the prompt pool. Identical responses are
dropped and re-sampled, so labelers never rank two copies of one text. Each item is written to
``runs/<run>/candidates/candidates.jsonl`` with its provenance (model, generation settings, time). Re-running adds
only prompts not yet there; with several processes each one takes a shard of the prompts.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.lib import runs
from pipeline.lib.errors import exit_with
from pipeline.lib.prompts import load_prompts
from pipeline.lib.stage import Stage, parse_configs
from pipeline.lib.tables import json_line, read_jsonl

CANDIDATES = "candidates.jsonl"


@dataclass
class CandidatesConfig:
    run: str = field(
        default=runs.DEFAULT_RUN, metadata={"help": "Run name: outputs go to <runs_dir>/<run>/candidates/."}
    )
    runs_dir: str = "runs"
    model_name_or_path: str | None = field(default=None, metadata={"help": "Default: the run's SFT model."})
    prompts: str | None = field(default=None, metadata={"help": "A file with a 'prompt' column (text or messages)."})
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts (default: all)."})
    k: int = field(default=4, metadata={"help": "Candidates per prompt."})
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call (each gives k samples)."})
    max_rounds: int = field(default=4, metadata={"help": "Sampling rounds to replace duplicates before giving up."})
    seed: int = 0

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("Set prompts: a file with a 'prompt' column (text or chat messages) to sample for.")
        if self.k < 2:
            raise ValueError(f"k must be at least 2 (a ranking needs two candidates), got {self.k}.")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("temperature must be > 0 and top_p in (0, 1].")


def unique_texts(texts: list[str], k: int, seen: list[str] | None = None) -> list[str]:
    """Up to k distinct non-empty texts, in order, continuing ``seen`` (whitespace-stripped comparison)."""
    out = list(seen or [])
    keys = {t.strip() for t in out}
    for text in texts:
        key = text.strip()
        if key and key not in keys and len(out) < k:
            keys.add(key)
            out.append(text)
    return out


def sample_batch(model, tokenizer, prompts: list[list[dict]], config: CandidatesConfig, seed: int) -> list[list[str]]:
    """k samples for each prompt of the batch."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            num_return_sequences=config.k,
            pad_token_id=tokenizer.pad_token_id,
        )
    decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [decoded[i * config.k : (i + 1) * config.k] for i in range(len(prompts))]


def generate_candidates(
    model,
    tokenizer,
    rows: list[dict],
    config: CandidatesConfig,
    provenance: dict,
    out_path: Path,
    progress: bool = True,
) -> dict[str, int]:
    """Sample k distinct candidates per prompt row, appending one JSON line per finished item to ``out_path``."""
    stats = {"items": 0, "samples_drawn": 0, "duplicates_dropped": 0, "short_items": 0}
    bar = tqdm(total=len(rows), desc="candidates", unit="prompt", disable=not progress)
    with open(out_path, "a", encoding="utf-8") as fh:
        for start in range(0, len(rows), config.batch_size):
            chunk = rows[start : start + config.batch_size]
            found: list[list[str]] = [[] for _ in chunk]
            for round_ in range(config.max_rounds):
                todo = [i for i, f in enumerate(found) if len(f) < config.k]
                if not todo:
                    break
                # Seeded by the batch's first prompt and the round: re-running reproduces the same candidates.
                seed = config.seed + zlib.crc32(chunk[0]["prompt_id"].encode()) + round_
                samples = sample_batch(model, tokenizer, [chunk[i]["prompt"] for i in todo], config, seed)
                for i, texts in zip(todo, samples, strict=True):
                    kept = len(found[i])
                    found[i] = unique_texts(texts, config.k, found[i])
                    stats["duplicates_dropped"] += config.k - (len(found[i]) - kept)
                stats["samples_drawn"] += config.k * len(todo)
            for row, texts in zip(chunk, found, strict=True):
                if len(texts) < 2:
                    stats["short_items"] += 1
                    continue  # nothing to rank
                stats["short_items"] += len(texts) < config.k
                item = {**row, "candidates": texts, "provenance": provenance}
                fh.write(json_line(item))
                stats["items"] += 1
            fh.flush()
            bar.update(len(chunk))
    bar.close()
    return stats


def read_done(path: Path) -> set[str]:
    return {row["prompt_id"] for row in read_jsonl(path)}


def main(config: CandidatesConfig) -> dict[str, Any]:
    state = PartialState()
    stage = Stage("candidates", config.run, config.runs_dir, [config], is_main_process=state.is_main_process)
    assert config.prompts is not None  # __post_init__ refused a config without them
    runs.require_path("prompts", config.prompts)
    model_path = str(runs.stage_output(config.run, "sft", config.runs_dir, config.model_name_or_path))
    rows, prompts_path = load_prompts(config.prompts, config.num_prompts), config.prompts
    out_path = stage.dir / CANDIDATES
    done = read_done(out_path)
    todo = [row for row in rows if row["prompt_id"] not in done]

    # step 1. each process samples its shard of the prompts into its own file.
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path).to(state.device).eval()
    provenance = {
        "model": model_path,
        "generation": {
            k: v for k, v in asdict(config).items() if k in ("k", "temperature", "top_p", "max_new_tokens", "seed")
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    shard = todo[state.process_index :: state.num_processes]
    shard_path = stage.dir / f".shard-{state.process_index}.jsonl"
    shard_path.unlink(missing_ok=True)
    started = stage.wall_time_s
    stats = generate_candidates(model, tokenizer, shard, config, provenance, shard_path, state.is_main_process)
    elapsed = stage.wall_time_s - started

    # step 2. the main process appends the shards to candidates.jsonl in prompt order.
    stats_path = stage.dir / f".stats-{state.process_index}.json"
    stats_path.write_text(json.dumps(stats))
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    new_items, totals = {}, {key: 0 for key in stats}
    for rank in range(state.num_processes):
        part = stage.dir / f".shard-{rank}.jsonl"
        for row in read_jsonl(part):
            new_items[row["prompt_id"]] = json_line(row)
        for key, value in json.loads((stage.dir / f".stats-{rank}.json").read_text()).items():
            totals[key] += value
        part.unlink()
        (stage.dir / f".stats-{rank}.json").unlink()
    with open(out_path, "a", encoding="utf-8") as fh:
        fh.writelines(new_items[row["prompt_id"]] for row in todo if row["prompt_id"] in new_items)

    metrics = {
        "prompts": len(rows),
        "already_done": len(rows) - len(todo),
        "new_items": len(new_items),
        "items_total": len(read_done(out_path)),
        "k": config.k,
        "samples_drawn": totals["samples_drawn"],
        "duplicates_dropped": totals["duplicates_dropped"],
        "items_with_fewer_than_k": totals["short_items"],
        "prompts_per_second": round(len(todo) / elapsed, 2) if todo and elapsed > 0 else None,
    }
    return stage.finish(
        metrics=metrics,
        inputs={"model": model_path, "prompts": prompts_path},
        outputs={"candidates": out_path},
        headline=f"{metrics['new_items']} new items ({metrics['already_done']} already there), k={config.k}",
    )


if __name__ == "__main__":
    exit_with(lambda: main(*parse_configs((CandidatesConfig,))))
