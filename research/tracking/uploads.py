"""What an offline W&B run keeps as plain files until ``poetry run sync-runs`` uploads it.

W&B records the tables, custom charts and artifacts of an offline run by the absolute paths of files it
staged, so a run folder that moved (another machine, another HOME) could not upload them. Offline runs
therefore log their metrics and media into the W&B record as usual, and keep those values here:
``<wandb dir>/wandb/uploads/<W&B run id>/uploads.json`` plus the files the values need (PNG table cells;
an artifact names its files relative to this folder, e.g. the run's ``best.pt``). ``sync-runs`` uploads
each item after ``wandb sync``, into the same W&B run (``resume="must"``), and marks it uploaded, so a
second ``sync-runs`` uploads nothing twice. ``predict`` adds its table here for a run recorded offline.

The values are plain (:class:`ImageValue`, :class:`TableValue`, :class:`ConfusionValue`,
:class:`ArtifactValue`); :mod:`research.tracking.wandb_log` turns them into W&B objects, live or at upload.
This module does not import ``wandb``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from research.errors import InputFileError
from research.tracking.runs import read_json, write_json

MANIFEST = "uploads.json"
UPLOADS = "uploads"  # <wandb dir>/wandb/uploads/<W&B run id>/


@dataclass
class ImageValue:
    """An image cell or media value: an HxW[x3] uint8 array, or a PNG file."""

    array: np.ndarray | None = None
    path: Path | None = None


@dataclass
class TableValue:
    columns: list[str]
    rows: list[list[Any]]  # cells: str, numbers, bools, None or ImageValue


@dataclass
class ConfusionValue:
    """W&B's interactive confusion matrix (``wandb.plot.confusion_matrix``)."""

    y_true: list[int]
    preds: list[int]
    class_names: list[str]


@dataclass
class ArtifactValue:
    name: str
    type: str
    files: list[Path]
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRef:
    """Which W&B run the uploads belong to."""

    id: str
    project: str
    entity: str | None = None


def uploads_dir(wandb_root: Path, run_id: str) -> Path:
    """``<wandb_root>/wandb/uploads/<run_id>``: ``wandb_root`` is the run folder (or ``wandb.dir``)."""
    return Path(wandb_root) / "wandb" / UPLOADS / run_id


class PendingUploads:
    """The upload list of one W&B run: ``log`` and ``summary`` items and artifacts, each marked once uploaded."""

    def __init__(self, folder: Path, run: RunRef) -> None:
        self.folder, self.run = Path(folder), run
        self.items: list[dict[str, Any]] = []
        self._files = 0  # PNGs written for the item being added
        if (self.folder / MANIFEST).exists():
            saved = read_json(self.folder / MANIFEST)
            self.items = list(saved.get("items", []))

    @classmethod
    def open(cls, folder: Path) -> PendingUploads:
        """An existing upload list (``folder/uploads.json``)."""
        path = Path(folder) / MANIFEST
        try:
            data = read_json(path)
            return cls(folder, RunRef(**data["run"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputFileError(f"{path} cannot be read ({err}); it lists what sync-runs uploads for one W&B run") from None

    @property
    def pending(self) -> list[dict[str, Any]]:
        return [item for item in self.items if not item.get("uploaded")]

    def log(self, data: Mapping[str, Any]) -> None:
        """Values for ``run.log`` (tables, charts and images become files here)."""
        self._add({"kind": "log", "data": {k: self._encode(v) for k, v in data.items()}})

    def summary(self, values: Mapping[str, Any]) -> None:
        self._add({"kind": "summary", "data": dict(values)})

    def artifact(self, artifact: ArtifactValue) -> None:
        files = [os.path.relpath(Path(f).resolve(), self.folder.resolve()) for f in artifact.files]
        self._add({"kind": "artifact", "name": artifact.name, "type": artifact.type, "files": files,
                   "aliases": list(artifact.aliases), "metadata": dict(artifact.metadata)})

    def decode(self, item: Mapping[str, Any]) -> dict[str, Any] | ArtifactValue:
        """An item as plain values again (files resolved against this folder, wherever it is now)."""
        if item["kind"] == "artifact":
            return ArtifactValue(item["name"], item["type"], [self.folder / f for f in item["files"]],
                                 list(item["aliases"]), dict(item["metadata"]))
        return {k: self._decode(v) for k, v in item["data"].items()}

    def mark_uploaded(self, item: dict[str, Any]) -> None:
        item["uploaded"] = datetime.now().isoformat(timespec="seconds")
        self._save()

    def _add(self, item: dict[str, Any]) -> None:
        self._files = 0
        self.items.append({"id": len(self.items) + 1, **item, "uploaded": None})
        self._save()

    def _save(self) -> None:
        write_json(self.folder / MANIFEST, {"run": vars(self.run), "items": self.items})

    def _encode(self, value: Any) -> Any:
        if isinstance(value, ImageValue):
            return {"_image": self._image_file(value)}
        if isinstance(value, TableValue):
            return {"_table": {"columns": list(value.columns), "rows": [[self._encode(c) for c in row] for row in value.rows]}}
        if isinstance(value, ConfusionValue):
            return {"_confusion": vars(value)}
        return value

    def _decode(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if "_image" in value:
            return ImageValue(path=self.folder / value["_image"])
        if "_table" in value:
            table = value["_table"]
            return TableValue(list(table["columns"]), [[self._decode(c) for c in row] for row in table["rows"]])
        if "_confusion" in value:
            return ConfusionValue(**value["_confusion"])
        return value

    def _image_file(self, image: ImageValue) -> str:
        """A PNG under ``files/`` for this image (copied from its file, or encoded from its array)."""
        self._files += 1
        name = f"files/{len(self.items) + 1:04d}-{self._files:05d}.png"
        (self.folder / "files").mkdir(parents=True, exist_ok=True)
        if image.array is None:
            shutil.copyfile(image.path, self.folder / name)
        else:
            Image.fromarray(image.array).save(self.folder / name)
        return name


def find_uploads(paths: Sequence[Path]) -> list[Path]:
    """Every upload folder (holding ``uploads.json``) equal to or below ``paths``."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        manifests = [path / MANIFEST] if (path / MANIFEST).exists() else sorted(path.rglob(MANIFEST)) if path.is_dir() else []
        for manifest in manifests:
            found.setdefault(manifest.parent.resolve(), None)
    return list(found)
