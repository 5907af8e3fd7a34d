"""``ferplus``: FERPlus's ten-annotator votes (``fer2013new.csv``) over FER2013's pixels, majority vote."""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

from research.data.importers.common import (
    DatasetImportError,
    Importer,
    ImportPlan,
    PlannedFile,
    class_folder,
    contempt_folder,
    find_file,
    iter_csv,
    progress,
)
from research.data.importers.fer2013 import FER2013_USAGE, fer_name, parse_pixels

FERPLUS_VOTES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "nf",
)
"""The 10 vote columns of ``fer2013new.csv`` (lower-cased; ``NF`` = not a face)."""


def ferplus_winner(votes: dict[str, int]) -> tuple[str | None, str]:
    """Majority (plurality) vote over the 10 FERPlus columns: ``(column, "")`` or ``(None, drop reason)``."""
    top = max(votes.values())
    if top <= 0:
        return None, "no votes"
    winners = [c for c in FERPLUS_VOTES if votes[c] == top]
    if len(winners) > 1:
        return None, "tie"
    winner = winners[0]
    if winner == "unknown":
        return None, "unknown"
    if winner == "nf":
        return None, "not a face (NF)"
    return winner, ""


class FerPlusImporter(Importer):
    """FERPlus votes (``fer2013new.csv``) over the FER2013 pixels (``fer2013.csv``), row i with row i.

    The label is the majority (plurality) of the 10 vote columns; ties, ``unknown``, ``NF``
    (not a face), rows without votes or without an image name are dropped and counted;
    contempt follows ``--contempt``.
    """

    name = "ferplus"
    expects = "a folder holding fer2013.csv and FERPlus's fer2013new.csv (or fer2013.csv with --labels)"
    options = ("bad_rows", "contempt", "labels")

    def inputs(self):
        pixels = find_file(self.src, "fer2013.csv", "FER2013 CSV")
        labels = self.opts.labels
        if labels is None:
            folder = self.src if self.src.is_dir() else self.src.parent
            labels = find_file(folder, "fer2013new.csv", "FERPlus label file")
        elif not labels.is_file():
            raise DatasetImportError(f"--labels {labels}: no such file. Pass FERPlus's fer2013new.csv.")
        return [pixels, labels], []

    def source(self) -> Path:
        return self.inputs()[0][0]

    def plan(self) -> ImportPlan:
        (pixels_path, labels_path), _ = self.inputs()
        contempt = contempt_folder(self.opts.contempt)
        label_rows = iter_csv(labels_path, ("Usage", "Image name", *FERPLUS_VOTES))
        pixel_rows = iter_csv(pixels_path, ("pixels",))
        files: list[PlannedFile] = []
        pairs = zip_longest(label_rows, pixel_rows)
        for index, (labelled, pixel_row) in enumerate(progress(pairs, "read fer2013new.csv")):
            if labelled is None or pixel_row is None:
                longer, line = (labels_path, labelled[0]) if pixel_row is None else (pixels_path, pixel_row[0])
                raise DatasetImportError(
                    f"{longer} line {line}: data row {index + 1} has no counterpart: {labels_path.name} and "
                    f"{pixels_path.name} must have the same rows in the same order (FERPlus labels row i of "
                    "FER2013). Use the original, unedited files."
                )
            line, row, problem = labelled
            origin = f"{labels_path} line {line}"
            fix = "Fix or delete that row in both files"
            if problem:
                self.items.bad(origin, "bad row: columns", problem, fix)
                continue
            split = FER2013_USAGE.get(row["usage"].strip())
            if split is None:
                self.items.bad(origin, "bad row: usage", f"Usage {row['usage']!r} is not {', '.join(FER2013_USAGE)}", fix)
                continue
            pixel_usage = pixel_row[1].get("usage", "").strip()
            if pixel_usage and pixel_usage != row["usage"].strip():
                raise DatasetImportError(
                    f"{origin} says Usage {row['usage'].strip()!r} but {pixels_path} line {pixel_row[0]} says "
                    f"{pixel_usage!r}: the two files are not aligned row for row. Use the original, unedited files."
                )
            image_name = row["image name"].strip()
            if not image_name:
                self.items.drop(origin, "no image name", "FERPlus left this FER2013 image out")
                continue
            try:
                votes = {c: int(row[c]) for c in FERPLUS_VOTES}
            except ValueError:
                self.items.bad(origin, "bad row: votes", "vote counts that are not integers", fix)
                continue
            winner, reason = ferplus_winner(votes)
            if winner is None:
                self.items.drop(origin, reason, " ".join(f"{c}={n}" for c, n in votes.items() if n))
                continue
            folder = class_folder(winner, contempt, self.items, origin)
            if folder is None:
                continue
            pixels, problem = (None, pixel_row[2]) if pixel_row[2] else parse_pixels(pixel_row[1]["pixels"])
            if pixels is None:
                self.items.bad(f"{pixels_path} line {pixel_row[0]}", "bad row: pixels", problem, "Fix or delete that row in both files")
                continue
            name = Path(image_name).stem + ".png"
            files.append(PlannedFile(split, folder, name, origin, pixels=pixels, fallback_name=fer_name(index)))
        splits = {s: f"FER2013 Usage={u}, labels by FERPlus majority vote" for u, s in FER2013_USAGE.items()}
        return ImportPlan(files, self.items.dropped, splits)
