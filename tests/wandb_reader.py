"""Read an offline W&B run file (``run-<id>.wandb``) back as the server would receive it (tests only).

The package never reads or writes W&B's file (``sync-runs`` hands it to ``wandb sync``); tests read it
to assert on what a user's dashboard will show: history rows, summary values, config, media files.
W&B has no public reader, so this is a minimal one of the format W&B writes (a LevelDB-style log:
a 7-byte header, 32 KiB blocks, each record fragment behind a crc32 / length / type header), each
record a serialized ``wandb.proto.wandb_internal_pb2.Record``. It checks the header and every CRC, so
a test also fails when W&B's own file is damaged or its format changes.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version 0
BLOCK, FRAGMENT = 32 * 1024, struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack(data[: HEADER.size])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: unknown W&B file header {(ident, magic, version)}"
    records, pos, pending = [], HEADER.size, b""
    while pos + FRAGMENT.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < FRAGMENT.size:
            pos += left
            continue
        crc, length, kind = FRAGMENT.unpack(data[pos : pos + FRAGMENT.size])
        if length == 0 and kind == 0:  # zero padding up to the block end
            pos += left
            continue
        fragment = data[pos + FRAGMENT.size : pos + FRAGMENT.size + length]
        assert zlib.crc32(fragment, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: CRC mismatch at byte {pos}"
        pos += FRAGMENT.size + length
        pending = fragment if kind in (FULL, FIRST) else pending + fragment
        if kind in (FULL, LAST):
            records.append(pending)
            pending = b""
    return records


def records(path: Path) -> list[pb.Record]:
    out = []
    for data in read_records(path):
        record = pb.Record()
        record.ParseFromString(data)
        out.append(record)
    return out


@dataclass
class OfflineRun:
    folder: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    run_id: str = ""
    project: str = ""
    exit_code: int | None = None  # set once the run was closed (wandb.finish): its exit record


def read_offline_run(folder: Path) -> OfflineRun:
    """History rows, the final summary, config, artifacts and file names of ``offline-run-*``."""
    folder = Path(folder)
    run = OfflineRun(folder)
    for record in records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id, record.run.project
            run.config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            run.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            for item in record.summary.remove:
                run.summary.pop(item.key or "/".join(item.nested_key), None)
        elif kind == "config":
            for item in record.config.update:
                run.config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
