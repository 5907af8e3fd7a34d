"""``rafdb``: RAF-DB basic (``EmoLabel/list_patition_label.txt`` and ``Image/aligned/``); its test split becomes validation."""

from __future__ import annotations

import logging
from pathlib import Path

from research.data.importers.common import (
    DatasetImportError,
    Importer,
    ImportPlan,
    PlannedFile,
    image_problem,
    progress,
)

log = logging.getLogger(__name__)

RAFDB_LABELS: dict[int, str] = {
    1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral",
}
RAFDB_SPLITS: dict[str, str] = {"train": "train", "test": "validation"}


class RafDbImporter(Importer):
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/<name>_aligned.jpg``."""

    name = "rafdb"
    expects = "the RAF-DB basic folder (EmoLabel/list_patition_label.txt, Image/aligned/)"

    def inputs(self):
        labels = self.src / "EmoLabel" / "list_patition_label.txt"
        images = self.src / "Image" / "aligned"
        if not labels.is_file():
            raise DatasetImportError(
                f"{labels} not found. SRC must be the RAF-DB basic folder holding EmoLabel/list_patition_label.txt "
                "and Image/aligned/."
            )
        if not images.is_dir():
            raise DatasetImportError(f"{images} not found: unpack RAF-DB's aligned.zip there (Image/aligned/*_aligned.jpg).")
        return [labels], [images]

    def plan(self) -> ImportPlan:
        (labels_path,), (images,) = self.inputs()
        files: list[PlannedFile] = []
        lines = labels_path.read_text(encoding="utf-8-sig").splitlines()
        fix = "Fix or delete that line"
        for line_no, text in enumerate(progress(lines, "check RAF-DB images"), start=1):
            if not text.strip():
                continue
            origin = f"{labels_path} line {line_no}"
            tokens = text.split()
            if len(tokens) != 2 or not tokens[1].isdigit() or int(tokens[1]) not in RAFDB_LABELS:
                ids = ", ".join(f"{i} {c}" for i, c in RAFDB_LABELS.items())
                self.items.bad(origin, "bad line", f"{text.strip()!r} is not 'NAME LABEL' with LABEL 1..7 ({ids})", fix)
                continue
            name = Path(tokens[0])
            split = RAFDB_SPLITS.get(name.name.split("_", 1)[0])
            if split is None:
                self.items.bad(origin, "bad line", f"{name.name!r} starts with neither train_ nor test_", fix)
                continue
            path = images / f"{name.stem}_aligned{name.suffix}"
            problem = image_problem(path)
            if problem:
                self.items.bad(
                    f"{path} (listed on {origin})", "missing image" if problem == "file not found" else "unreadable image",
                    problem, "Put the aligned image there",
                )
                continue
            files.append(PlannedFile(split, RAFDB_LABELS[int(tokens[1])], path.name, origin, source=path))
        note = (
            "RAF-DB basic has no separate validation split: validation/ holds RAF-DB's test split (test_*). "
            "Selecting checkpoints on it and reporting it as a test score is tuning on the test set."
        )
        log.warning("%s", note)
        splits = {"train": "RAF-DB train_*", "validation": "RAF-DB test_* (RAF-DB has no separate validation split)"}
        return ImportPlan(files, self.items.dropped, splits, notes=[note])
