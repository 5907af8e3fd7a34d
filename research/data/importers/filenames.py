"""``filenames``: sets labelled by file names (JAFFE) or class folders (CK+), without splits: split here."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from research.data.classes import label_from_filename
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

JAFFE_CODES: dict[str, str] = {
    "AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness", "NE": "neutral", "SA": "sadness", "SU": "surprise",
}
CKPLUS_IDS: tuple[str, ...] = (
    "neutral", "anger", CONTEMPT, "disgust", "fear", "happiness", "sadness", "surprise",
)
"""CK+ emotion ids 0..7: neutral, anger, contempt, disgust, fear, happy, sadness, surprise."""


def jaffe_label(file_name: str) -> str | None:
    """Label of a JAFFE-style name ``KA.AN1.39.tiff`` (second token's first two letters), else None."""
    tokens = file_name.split(".")
    if len(tokens) >= 3:
        return JAFFE_CODES.get(tokens[1][:2].upper())
    return None


class FilenamesImporter(FolderImporter):
    """File-name-labelled sets without splits: JAFFE-style names and CK+-style class folders.

    Top-level image files take their label from the name (``KA.AN1.39.tiff``, or ``anger_1.jpg``);
    images in ``SRC/<label>/`` (any alias, or CK+ ids 0..7) take the folder's. The validation
    split is drawn here: seeded, stratified by class, by image (not by subject).
    """

    name = "filenames"
    expects = "a folder of JAFFE-style named images and/or CK+-style class folders"
    options = ("bad_rows", "contempt", "val_fraction", "seed")

    def plan(self) -> ImportPlan:
        frac = self.opts.val_fraction
        if not 0.0 < frac < 1.0:
            raise DatasetImportError(f"--val-fraction {frac}: must be between 0 and 1 (exclusive), e.g. 0.2.")
        contempt = contempt_folder(self.opts.contempt)
        entries = sorted(p for p in self.src.iterdir() if not is_hidden(p))
        class_dirs = [p for p in entries if p.is_dir()]
        labels = {d: id_or_name(d, CKPLUS_IDS, "CK+") for d in class_dirs}
        planned = [self._file(p, None, "train", contempt) for p in progress(entries, "check files") if p.is_file()]
        files = [f for f in planned if f is not None]
        for class_dir in class_dirs:
            files.extend(self._images(class_dir, labels[class_dir], "train", contempt))
        self._split(files, frac, self.opts.seed)
        how = f"seeded stratified split by class (val_fraction={frac}, seed={self.opts.seed}), by image, not by subject"
        note = f"No split in the source: validation/ is a {how}."
        return ImportPlan(files, self.items.dropped, {"train": how, "validation": how}, notes=[note])

    def label_from_name(self, path: Path) -> str | None:
        label = jaffe_label(path.name) or label_from_filename(path.stem)
        if label is None:
            self.items.bad(
                str(path), "no label in the file name",
                f"no emotion in the file name {path.name!r}: expected JAFFE-style SUBJECT.CODEn.N.ext with CODE "
                f"one of {' '.join(JAFFE_CODES)} (e.g. KA.AN1.39.tiff) or a class name (anger_1.jpg)",
                "Rename the file or move it into a class folder",
            )
        return label

    @staticmethod
    def _split(files: list[PlannedFile], frac: float, seed: int) -> None:
        """Move a seeded ``frac`` of each class to validation (at least 1 when a class has 2 or more)."""
        by_label: dict[str, list[PlannedFile]] = defaultdict(list)
        for f in files:
            by_label[f.label].append(f)
        for label, group in sorted(by_label.items()):
            group.sort(key=lambda f: f.origin)
            n = len(group)
            n_val = min(max(round(n * frac), 1), n - 1) if n >= 2 else 0
            if n < 2:
                log.warning("class %s has %d image(s): none goes to validation", label, n)
            class_seed = int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "big")
            order = np.random.default_rng([seed, class_seed]).permutation(n)
            for i in order[:n_val]:
                group[i].split = "validation"
