"""The run folder: the contract between trainer, predict, evaluate, report, W&B and sweeps.

```
runs/<run-id>/
  config.yaml  history.csv  summary.json  best.pt  last.pt  classification_report.txt
  figures/  predictions/<mode>/  evaluations/<name>/
```
Files are written atomically (temp file + rename), so an interrupted run never leaves a
half-written history or checkpoint behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

HISTORY_COLUMNS = (
    "epoch",
    "train/loss", "train/acc", "train/top2", "train/macro_f1",
    "val/loss", "val/acc", "val/top2", "val/macro_f1", "val/weighted_f1",
    "lr", "epoch_seconds",
)


class RunFolderError(FileNotFoundError):
    """A path that is not a usable run folder."""


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def new_run_id(model_name: str, parent: Path) -> str:
    """``<model>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that folder exists."""
    base = f"{model_name.replace('/', '-')}-{datetime.now():%Y%m%d-%H%M%S}"
    run_id, k = base, 1
    while (Path(parent) / run_id).exists():
        k += 1
        run_id = f"{base}-{k}"
    return run_id


class RunFolder:
    """Paths and readers/writers of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (a run folder or any file inside it)."""
        path = Path(path)
        if path.is_file():
            path = path.parent
        run = cls(path)
        if not run.config_path.exists():
            raise RunFolderError(
                f"{path} is not a run folder (no config.yaml). Pass a folder made by `poetry run train`, "
                "e.g. runs/scratch_cnn-20260101-120000."
            )
        return run

    @property
    def run_id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.yaml")
    history_path = property(lambda self: self.path / "history.csv")
    summary_path = property(lambda self: self.path / "summary.json")
    best_path = property(lambda self: self.path / "best.pt")
    last_path = property(lambda self: self.path / "last.pt")
    report_path = property(lambda self: self.path / "classification_report.txt")
    figures = property(lambda self: self.path / "figures")
    predictions = property(lambda self: self.path / "predictions")
    evaluations = property(lambda self: self.path / "evaluations")

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        _atomic_write(path, lambda tmp: tmp.write_text(text))
        return path

    def write_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite history.csv with all epochs so far (one row per epoch)."""
        extra = sorted({k for row in rows for k in row} - set(HISTORY_COLUMNS))
        columns = list(HISTORY_COLUMNS) + extra

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: row.get(k, "") for k in columns})

        _atomic_write(self.history_path, write)

    def read_history(self) -> list[dict[str, float]]:
        if not self.history_path.exists():
            return []
        with self.history_path.open(newline="") as fh:
            return [
                {k: (int(float(v)) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(fh)
            ]

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary_path) if self.summary_path.exists() else {}

    def save_checkpoint(self, path: Path, state: Mapping[str, Any]) -> None:
        _atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def list_runs(roots: Iterable[str | Path]) -> list[RunFolder]:
    """Run folders directly under (or equal to) each root that have a summary.json, by name."""
    found: list[RunFolder] = []
    for root in roots:
        root = Path(root)
        candidates = [root] if (root / "summary.json").exists() else sorted(root.glob("*/summary.json"))
        for candidate in candidates:
            folder = candidate if candidate.is_dir() else candidate.parent
            found.append(RunFolder(folder))
    return found
