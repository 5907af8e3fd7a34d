"""Read an offline W&B run file (``run-<id>.wandb``) back as the server would receive it.

The file is W&B's record log (read by :func:`research.tracking.wandb_offline.read_record_log`, whose
byte-exact round trip is tested in tests/test_wandb_record.py), each record a serialized
``wandb_internal_pb2.Record``. Tests use it to assert on what a user's
dashboard will show: history rows, summary values, media files, tables and artifacts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

from research.tracking.wandb_offline import read_record_log


def records(path: Path) -> list[pb.Record]:
    _header, raw = read_record_log(path)
    out = []
    for data in raw:
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
    exit_code: int | None = None  # set once the run was closed (wandb.finish): its exit record


def read_offline_run(folder: Path) -> OfflineRun:
    """History rows, the final summary, config, artifacts and file names of ``offline-run-*``."""
    folder = Path(folder)
    run = OfflineRun(folder)
    for record in records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
        elif kind == "history":
            run.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            for item in record.summary.remove:
                run.summary.pop(item.key or "/".join(item.nested_key), None)
        elif kind == "config":
            for item in record.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
