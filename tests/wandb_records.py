"""Reads a W&B offline run file (``run-*.wandb``), to check what a stage logged without a W&B server.

The file is a LevelDB-style log: a 7-byte file header (":W&B", magic, version), then 32 KiB blocks of records, each
framed by a 7-byte header (crc32c, little-endian length, type: 1 full, 2 first, 3 middle, 4 last). Each record is a
``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # the writer pads a block's tail that cannot hold a header
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:
            pos += left_in_block
            continue
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
            pending = b""
    parsed = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def history_keys(path: str | Path) -> set[str]:
    """Every metric key logged with ``wandb.log`` in the run."""
    keys = set()
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                keys.add(item.key or "/".join(item.nested_key))
    return keys


def run_info(path: str | Path) -> dict:
    """The run's group, job type and config, as the run record stores them."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            config = {item.key: json.loads(item.value_json) for item in run.config.update}
            return {"group": run.run_group, "job_type": run.job_type, "config": config}
    raise ValueError(f"{path} holds no run record")


def find_run_file(wandb_dir: str | Path) -> Path:
    files = sorted(Path(wandb_dir).glob("**/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no W&B run file under {wandb_dir}")
    return files[-1]
