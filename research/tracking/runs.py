"""The run folder: the contract between trainer, predict, evaluate, report, W&B and sweeps.

```
runs/<run-id>/
  config.yaml  history.csv  summary.json  best.pt  last.pt  classification_report.txt
  per_class.json  confusion_counts.json  val_predictions.npz
  figures/  predictions/<mode>/  evaluations/<name>/
```
Files are written atomically (temp file + rename), so an interrupted run never leaves a
half-written history or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from research.errors import OutputWriteError, UserError, cannot_write  # noqa: F401 (OutputWriteError: re-exported)

HISTORY_COLUMNS = (
    "epoch",
    "train/loss", "train/acc", "train/top2", "train/macro_f1",
    "val/loss", "val/acc", "val/top2", "val/macro_f1", "val/weighted_f1",
    "lr", "epoch_seconds",
)


class RunFolderError(UserError, FileNotFoundError):
    """A path that is not a usable run folder."""


class RunExistsError(UserError, FileExistsError):
    """A finished run already holds the folder a new run would write."""


class CheckpointError(RunFolderError):
    """A checkpoint that is missing, truncated or not a checkpoint of this package."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds more than tensors, numbers, strings, lists and dicts: refused unread."""


# Checkpoints hold tensors, numbers, strings, lists and dicts, which torch's weights-only loader reads
# without running any code. last.pt files written before checkpoints were made of plain Python types hold
# numpy float64 learning rates; these three globals rebuild exactly such a scalar, and nothing else is allowed.
LEGACY_CHECKPOINT_GLOBALS = (np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temp file and rename; on any failure the temp file is removed and the old
    file (if any) stays as it was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise cannot_write(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_torch_file(path: Path) -> Any:
    """``torch.load`` that runs no code from the file (``weights_only=True``): tensors, numbers, strings,
    lists, dicts and the numpy floats of older checkpoints (:data:`LEGACY_CHECKPOINT_GLOBALS`). A pickle
    that calls or builds anything else is an :class:`UnsafeCheckpointError` naming it; other read errors
    (a truncated or foreign file) pass through."""
    try:
        with torch.serialization.safe_globals(list(LEGACY_CHECKPOINT_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _calls_code(path):
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")), "")
        raise UnsafeCheckpointError(
            f"{path} was refused without running it: it holds more than tensors, numbers, strings, lists and dicts"
            f"{f' ({detail[:160]})' if detail else ''}, and unpickling such a file can run any code. Use a checkpoint written by "
            "`poetry run train`; a plain state_dict of weights you trust goes to model.pretrained_file"
        ) from None


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _calls_code(path: Path) -> bool:
    """Whether a file the weights-only loader refused is a pickle that imports or calls something (a torch
    zip checkpoint whose pickle was refused, or a bare pickle with such opcodes), rather than a damaged file.
    Only reads opcodes; nothing is unpickled."""
    if zipfile.is_zipfile(path):
        return True
    try:
        with open(path, "rb") as fh:
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(fh))
    except Exception:  # not a pickle at all: damaged
        return False


def read_checkpoint(path: Path, *, summary: Path | None = None) -> dict[str, Any]:
    """A checkpoint written by the trainer, loaded without unpickling code; a missing or damaged file is a
    :class:`CheckpointError` naming the file and the way out, a file that needs more than plain types an
    :class:`UnsafeCheckpointError`."""
    path = Path(path)
    if not path.exists():
        hint = f" (see {summary})" if summary is not None else ""
        rerun = f"; there is nothing to resume: rerun {_started_by(summary)}" if path.name == "last.pt" else ""
        raise CheckpointError(f"{path} not found: the run did not finish an epoch{hint}{rerun}")
    try:
        ckpt = load_torch_file(path)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # truncated zip, not a torch file at all
        first = "not a PyTorch file" if isinstance(err, pickle.UnpicklingError) else str(err).splitlines()[0][:120]
        raise CheckpointError(
            f"{path} is damaged or not a checkpoint ({type(err).__name__}: {first}). "
            + _checkpoint_way_out(path)
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this package (no model weights). " + _checkpoint_way_out(path))
    return ckpt


def _started_by(summary: Path | None) -> str:
    """The command that started a run (from its summary.json), for "rerun ..." messages."""
    try:
        command = read_json(summary).get("command") if summary is not None and summary.is_file() else None
    except (OSError, ValueError, AttributeError):
        command = None
    return f"the same command (`{command}`)" if command else "the same command"


def _checkpoint_way_out(path: Path) -> str:
    other = "last.pt" if path.name == "best.pt" else "best.pt"
    if path.name == "last.pt":
        return (
            "It cannot be resumed from; start a new run (a new run.name), or score the run's best.pt "
            "with predict/evaluate if it is intact."
        )
    return f"Use --checkpoint {other.removesuffix('.pt')} if {other} is intact, or retrain the run."


def plain_types(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers (containers holding one rebuilt, everything else as
    it is): what a checkpoint may hold, so that :func:`load_torch_file` reads it without allow-listed globals."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        items = {k: plain_types(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, (list, tuple)):
        converted = [plain_types(v) for v in value]
        return value if all(a is b for a, b in zip(converted, value, strict=True)) else type(value)(converted)
    return value


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


def write_npz(path: Path, **arrays: Any) -> None:
    """Arrays in one compressed ``.npz`` file, written atomically like every other run file."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)

    _atomic_write(path, write)


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
    val_predictions = property(lambda self: self.path / "val_predictions.npz")

    val_split_path = property(lambda self: self.path / "val_split.json")

    def val_split_files(self) -> list[str] | None:
        """The validation images the run carved from train/ (relative to it), when it did."""
        return list(read_json(self.val_split_path)["files"]) if self.val_split_path.exists() else None

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
        def write(tmp: Path) -> None:
            try:
                torch.save(plain_types(dict(state)), tmp)
            except RuntimeError as err:  # torch's stream writer reports a full disk as RuntimeError
                raise OSError(None, f"torch.save failed ({str(err).splitlines()[0]})") from None

        _atomic_write(path, write)
