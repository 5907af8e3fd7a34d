"""``affectnet``: AffectNet as class-id (or class-name) folders per split."""

from __future__ import annotations

import logging
from pathlib import Path

from research.data.importers.common import (
    CONTEMPT,
    DatasetImportError,
    FolderImporter,
    ImportPlan,
    PlannedFile,
    contempt_folder,
    id_or_name,
    is_hidden,
    progress,
)

log = logging.getLogger(__name__)

AFFECTNET_IDS: tuple[str, ...] = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", CONTEMPT,
)
"""AffectNet class ids 0..7: Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt."""
AFFECTNET_SPLITS: dict[str, str] = {
    "train": "train", "training": "train", "val": "validation", "valid": "validation",
    "validation": "validation", "test": "test",
}


class AffectNetImporter(FolderImporter):
    """AffectNet as class-id folders ``SRC/<split>/<id>/`` (or English class names); splits train, val."""

    name = "affectnet"
    expects = "the AffectNet folder (train/<id or class>/, val/<id or class>/)"

    def plan(self) -> ImportPlan:
        contempt = contempt_folder(self.opts.contempt)
        split_dirs: dict[str, Path] = {}
        for folder in sorted(p for p in self.src.iterdir() if p.is_dir() and not is_hidden(p)):
            split = AFFECTNET_SPLITS.get(folder.name.lower())
            if split is None:
                log.warning("%s: not a split folder (train, val, validation, test); ignored", folder)
                continue
            if split in split_dirs:
                raise DatasetImportError(f"{split_dirs[split]} and {folder} are both the {split} split; keep one.")
            split_dirs[split] = folder
        missing = [s for s in ("train", "validation") if s not in split_dirs]
        if missing:
            raise DatasetImportError(
                f"{self.src}: no {' or '.join(missing)} split folder. Expected SRC/train/<id>/ and SRC/val/<id>/ "
                "(ids 0..7) or SRC/validation/<id>/."
            )
        files: list[PlannedFile] = []
        for split, split_dir in split_dirs.items():
            for loose in sorted(p for p in split_dir.iterdir() if p.is_file() and not is_hidden(p)):
                self.items.drop(str(loose), "not in a class folder")
            class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p))
            labels = {d: id_or_name(d, AFFECTNET_IDS, "AffectNet") for d in class_dirs}
            for class_dir in progress(class_dirs, f"check AffectNet {split}"):
                files.extend(self._images(class_dir, labels[class_dir], split, contempt))
        splits = {s: f"AffectNet {d.name}/" for s, d in split_dirs.items()}
        return ImportPlan(files, self.items.dropped, splits)
