"""``fer2013``: FER2013's ``emotion,pixels,Usage`` CSV; each row becomes a 48x48 grayscale PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from research.data.importers.common import (
    Importer,
    ImportPlan,
    PlannedFile,
    find_file,
    iter_csv,
    progress,
)

FER2013_SIDE = 48
FER2013_EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
"""FER2013 ``emotion`` ids 0..6: Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral."""
FER2013_USAGE: dict[str, str] = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}


def parse_pixels(text: str) -> tuple[np.ndarray | None, str]:
    """FER2013 ``pixels`` as a 48x48 uint8 array, or None and the problem."""
    values = text.split()
    expected = FER2013_SIDE * FER2013_SIDE
    if len(values) != expected:
        return None, f"{len(values)} pixel values, expected {expected} (48x48 grayscale)"
    try:
        arr = np.array(values, dtype=np.int64)
    except ValueError:
        return None, "pixel values that are not integers"
    if arr.min() < 0 or arr.max() > 255:
        return None, f"pixel values outside 0..255 (min {arr.min()}, max {arr.max()})"
    return arr.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE), ""


def fer_name(index: int) -> str:
    """FER2013 row ``index`` (0-based) -> ``fer0000012.png``, the naming FERPlus uses."""
    return f"fer{index:07d}.png"


class Fer2013Importer(Importer):
    """FER2013 ``emotion,pixels,Usage`` CSV; each row becomes a 48x48 grayscale PNG ``fer%07d.png``."""

    name = "fer2013"
    expects = "FER2013's CSV (fer2013.csv: emotion,pixels,Usage) or the folder holding it"

    def inputs(self):
        return [find_file(self.src, "fer2013.csv", "FER2013 CSV")], []

    def source(self) -> Path:
        return self.inputs()[0][0]

    def plan(self) -> ImportPlan:
        path = self.inputs()[0][0]
        files: list[PlannedFile] = []
        rows = iter_csv(path, ("emotion", "pixels", "Usage"))
        for index, (line, row, problem) in enumerate(progress(rows, "read fer2013.csv")):
            origin = f"{path} line {line}"
            fix = "Fix or delete that row"
            if problem:
                self.items.bad(origin, "bad row: columns", problem, fix)
                continue
            emotion = row["emotion"].strip()
            if not (emotion.isdigit() and int(emotion) < len(FER2013_EMOTIONS)):
                ids = ", ".join(f"{i} {c}" for i, c in enumerate(FER2013_EMOTIONS))
                self.items.bad(origin, "bad row: emotion id", f"emotion {emotion!r} is not an id 0..6 ({ids})", fix)
                continue
            split = FER2013_USAGE.get(row["usage"].strip())
            if split is None:
                self.items.bad(
                    origin, "bad row: usage", f"Usage {row['usage']!r} is not {', '.join(FER2013_USAGE)}", fix
                )
                continue
            pixels, problem = parse_pixels(row["pixels"])
            if pixels is None:
                self.items.bad(origin, "bad row: pixels", problem, fix)
                continue
            files.append(PlannedFile(split, FER2013_EMOTIONS[int(emotion)], fer_name(index), origin, pixels=pixels))
        splits = {s: f"FER2013 Usage={u}" for u, s in FER2013_USAGE.items()}
        return ImportPlan(files, self.items.dropped, splits)
