"""A GGUF file (llama.cpp's format) as a plain transformers model folder, for the stages to load like any other.

transformers reads GGUF through the ``gguf`` package and dequantizes the weights to float32; such a model refuses
``save_pretrained`` while its config still says it came from GGUF, so the weights move into a fresh model of the same
class and the folder that results loads without ``gguf``. Tied input and output embeddings stay tied.

``python -m pipeline.lib.gguf FILE.gguf OUT_DIR [--pad_token TOKEN]`` converts a file of your own.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from pipeline.lib.errors import DataError


def load_gguf(path: str | Path):
    """(model, tokenizer) from a GGUF file, in float32; a file transformers cannot read is a ``DataError`` that says
    why (another architecture, a quantisation it cannot dequantize, not a GGUF file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise DataError(
            "reading a GGUF file needs the `gguf` package: `make setup` installs it (or pip install -e '.[gguf]')"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers has no error type of its own for an unreadable file: an unknown architecture is a ValueError, an
    # unknown quantisation a KeyError or NotImplementedError, a file that is no GGUF an OSError or a struct error.
    except (ValueError, KeyError, NotImplementedError, TypeError, OSError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(
            f"{path}: transformers cannot read this GGUF file ({reason}). It reads the architectures and "
            "quantisations listed under 'GGUF' in the transformers docs; convert the original model folder instead, "
            "or pick another file."
        ) from error
    return model, tokenizer


def plain_copy(model):
    """The same weights in a fresh model of the same class, without the GGUF origin that blocks saving."""
    config = model.config
    del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=False)  # a tied lm_head has no entry of its own
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def convert(path: str | Path, out_dir: str | Path, pad_token: str | None = None) -> Path:
    """Write the GGUF file at ``path`` as a model folder into ``out_dir`` (atomically). ``pad_token`` names an
    existing token to pad with, for a tokenizer whose pad token is its EOS (a padded batch then looks finished)."""
    model, tokenizer = load_gguf(path)
    if pad_token is not None:
        pad_id = tokenizer.convert_tokens_to_ids(pad_token)
        if pad_id is None or pad_id == tokenizer.unk_token_id and pad_token != tokenizer.unk_token:
            raise DataError(f"--pad_token {pad_token!r} is not a token of {path}'s vocabulary")
        tokenizer.pad_token = pad_token
        model.config.pad_token_id = pad_id
        model.generation_config.pad_token_id = pad_id
    model = plain_copy(model)
    if model.config.tie_word_embeddings and model.get_output_embeddings() is not None:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o755)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.lib.gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf_file")
    parser.add_argument("out_dir")
    parser.add_argument("--pad_token", help="an existing token to pad with (default: the file's own pad token)")
    args = parser.parse_args(argv)
    print(f"model folder: {convert(args.gguf_file, args.out_dir, args.pad_token)}")


if __name__ == "__main__":
    from pipeline.lib.errors import run

    raise SystemExit(run(main))
