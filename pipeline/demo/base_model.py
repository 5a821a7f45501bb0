"""The embedded default base model: a tiny Llama-architecture causal LM and a byte-level BPE tokenizer.

No model hub is needed: the tokenizer is trained on the project's own demo text and the model is randomly
initialised from a seed, both deterministically. ``python -m pipeline.demo`` builds the demo's
``runs/_models/tiny-llama/`` (and the tests' ``micro-llama``) with ``resolve_model("embedded:<preset>")``; the stage
configs name it by that path, where any Hugging Face model id or local path can stand instead.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.demo.data import corpus_texts, is_current, replace_dir, stamp

EMBEDDED_PREFIX = "embedded:"

PAD, EOS = "<|pad|>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Assistant turns are wrapped in {% generation %} so TRL's `assistant_only_loss` can mask everything else, and they
# end with the EOS token and no newline, so "prompt + completion" renders as a plain extension of the prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


PRESETS = {
    # The demo default: about 3.5M parameters, enough to learn the demo task yet fine-tuned on 2 CPU cores in minutes.
    "tiny-llama": Preset(4096, 256, 688, 4, 4, 4, 1024),
    # For tests: fast enough to run every stage, multi-process, in seconds.
    "micro-llama": Preset(1024, 64, 128, 2, 2, 2, 512),
}


def is_embedded(name_or_path: str) -> bool:
    return name_or_path.startswith(EMBEDDED_PREFIX)


def resolve_model(name_or_path: str, runs_dir: str | Path = "runs") -> str:
    """The path or id to give ``from_pretrained``: builds an embedded model on first use, passes others through."""
    if not is_embedded(name_or_path):
        return name_or_path
    preset = name_or_path.removeprefix(EMBEDDED_PREFIX)
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown embedded model '{name_or_path}'. Choose one of: "
            + ", ".join(EMBEDDED_PREFIX + p for p in PRESETS)
            + ", or give a Hugging Face id or a path."
        )
    # The tokenizer is trained on the demo text, so a new demo version means a new model.
    target = Path(runs_dir) / "_models" / preset
    if not is_current(target):
        build_base_model(preset, target)
    return str(target)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def random_llama(spec: Preset, tokenizer, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` of ``spec`` for ``tokenizer`` (tied embeddings, its pad and EOS
    tokens, no BOS), the same weights for the same seed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=128
    )
    return model


def build_base_model(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build tokenizer and randomly initialised model into ``out_dir`` (atomically: a crash leaves no half model)."""
    # BPE training runs in parallel threads; one thread keeps merges identical from run to run.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = PRESETS[preset]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tokenizer = train_tokenizer(corpus_texts(seed=seed), spec.vocab_size)
        model = random_llama(spec, tokenizer, seed)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "PRESET.json").write_text(str(asdict(spec)).replace("'", '"') + "\n")
        stamp(tmp)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Build an embedded base model (tokenizer + random init) into a folder."
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny-llama")
    parser.add_argument("--out", help="output folder (default: the cache under runs/_models/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs_dir", default="runs")
    args = parser.parse_args()
    if args.out:
        path: str | Path = build_base_model(args.preset, args.out, seed=args.seed)
    else:
        path = resolve_model(EMBEDDED_PREFIX + args.preset, runs_dir=args.runs_dir)
    from transformers import AutoConfig

    n_params = _count_parameters(path)
    print(
        f"{EMBEDDED_PREFIX}{args.preset}: {n_params / 1e6:.2f}M parameters, vocab {AutoConfig.from_pretrained(path).vocab_size}, at {path}"
    )


def _count_parameters(path: str | Path) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), "pt") as fh:
        return sum(math.prod(fh.get_slice(name).get_shape()) for name in fh.keys())


if __name__ == "__main__":
    main()
