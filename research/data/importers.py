"""Importers: public facial-expression datasets into the class-folder layout the data layer reads.

``import_dataset(FORMAT, SRC, DEST)`` writes ``DEST/<split>/<class>/<file>`` (splits ``train``,
``validation`` and, where the source has one, ``test``; class folders named by the canonical
English names of :mod:`research.data.classes`) and ``DEST/manifest.json``: format, source,
options, images per split and class, every dropped item with its reason, and the sha256 of
every written file.

Formats (see each importer class): ``fer2013`` (the CSV of pixels), ``ferplus`` (FERPlus
majority votes over the FER2013 pixels), ``rafdb`` (RAF-DB basic), ``affectnet`` (class-id
folders) and ``filenames`` (JAFFE-style file names or CK+-style class folders, split here).

An import is planned in full (every row parsed, every image file checked) before anything is
written, so a bad source stops it with nothing written. It is idempotent: a file whose bytes
are already in DEST is not rewritten, and a second run with the same source and options
verifies the checksums and says there is nothing to do. A DEST written from another source or
format is refused unless ``force``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from research.data.classes import (
    CANONICAL_CLASSES,
    label_from_filename,
    normalize_name,
    try_canonical_name,
)
from research.data.images import is_image_path

log = logging.getLogger(__name__)

BadRowPolicy = Literal["error", "skip"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
CONTEMPT = "contempt"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SKIP_HINT = "or pass --bad-rows skip to leave such items out (they are counted in manifest.json)"

FER2013_SIDE = 48
FER2013_EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
"""FER2013 ``emotion`` ids 0..6: Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral."""
FER2013_USAGE: dict[str, str] = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
FERPLUS_VOTES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "nf",
)
"""The 10 vote columns of ``fer2013new.csv`` (lower-cased; ``NF`` = not a face)."""
RAFDB_LABELS: dict[int, str] = {
    1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral",
}
RAFDB_SPLITS: dict[str, str] = {"train": "train", "test": "validation"}
AFFECTNET_IDS: tuple[str, ...] = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", CONTEMPT,
)
"""AffectNet class ids 0..7: Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt."""
AFFECTNET_SPLITS: dict[str, str] = {
    "train": "train", "training": "train", "val": "validation", "valid": "validation",
    "validation": "validation", "test": "test",
}
JAFFE_CODES: dict[str, str] = {
    "AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness", "NE": "neutral", "SA": "sadness", "SU": "surprise",
}
CKPLUS_IDS: tuple[str, ...] = (
    "neutral", "anger", CONTEMPT, "disgust", "fear", "happiness", "sadness", "surprise",
)
"""CK+ emotion ids 0..7: neutral, anger, contempt, disgust, fear, happy, sadness, surprise."""


class DatasetImportError(ValueError):
    """A source that cannot be imported as asked; the message names the file (and line) and the fix."""


# --- the plan: what an import will write ---------------------------------------------------
@dataclass(eq=False)
class PlannedFile:
    """One image to write: copied from ``source`` byte for byte, or ``pixels`` encoded as PNG."""

    split: str
    label: str
    name: str
    origin: str
    source: Path | None = None
    pixels: np.ndarray | None = None  # HxW uint8 grayscale
    fallback_name: str = ""  # used when two files would get the same name

    @property
    def relpath(self) -> str:
        return f"{self.split}/{self.label}/{self.name}"


@dataclass(frozen=True)
class Dropped:
    """A source item left out: where it came from, the reason (a short category) and details."""

    origin: str
    reason: str
    detail: str = ""


@dataclass
class ImportPlan:
    files: list[PlannedFile]
    dropped: list[Dropped]
    splits: dict[str, str]  # split -> what it holds, in the source's own terms
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    """What an import did. ``up_to_date``: DEST already held exactly this import."""

    dest: Path
    manifest: dict[str, Any]
    written: int
    unchanged: int
    removed: int
    up_to_date: bool

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest["counts"]


class _Items:
    """Collects dropped items and applies the bad-row policy (raise, or drop and count)."""

    def __init__(self, bad_rows: BadRowPolicy) -> None:
        self.bad_rows = bad_rows
        self.dropped: list[Dropped] = []

    def drop(self, origin: str, reason: str, detail: str = "") -> None:
        self.dropped.append(Dropped(origin, reason, detail))

    def bad(self, origin: str, reason: str, problem: str, fix: str) -> None:
        if self.bad_rows == "error":
            raise DatasetImportError(f"{origin}: {problem}. {fix}, {SKIP_HINT}.")
        self.drop(origin, reason, problem)


# --- helpers --------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listing_digest(root: Path) -> str:
    """sha256 of the sorted (relative path, size) list of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _progress(iterable, desc: str, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, unit="item", leave=False, disable=None)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"__MACOSX", "Thumbs.db"}


def _image_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or None. Checks the header and structure, cheaply."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot be decoded as an image ({err})"
    return None


def _flat_name(rel: Path) -> str:
    """A relative source path as one file name: ``train/1/x.jpg`` -> ``train__1__x.jpg``."""
    return "__".join(rel.parts)


def _contempt_folder(policy: str) -> str | None:
    """The class folder contempt images go to under ``--contempt POLICY``; None drops them."""
    if policy == "drop":
        return None
    if policy == "keep":
        return CONTEMPT
    if policy.startswith("map:"):
        target = try_canonical_name(policy[4:])
        if target is None:
            raise DatasetImportError(
                f"--contempt {policy}: {policy[4:]!r} is not a class; use map:CLASS with one of "
                f"{', '.join(CANONICAL_CLASSES)}."
            )
        return target
    raise DatasetImportError(f"--contempt {policy!r}: expected drop, keep or map:CLASS (e.g. map:disgust).")


def _class_folder(label: str, contempt: str | None, items: _Items, origin: str) -> str | None:
    """Folder for a canonical label or contempt; None (and a counted drop) for dropped contempt."""
    if label != CONTEMPT:
        return label
    if contempt is None:
        items.drop(origin, "contempt", "contempt is not one of the 7 classes (--contempt keep or map:CLASS)")
    return contempt


def _find_file(src: Path, name: str, what: str) -> Path:
    """``src`` itself when it is a file, else ``src/name`` or ``src/*/name``."""
    if src.is_file():
        return src
    if not src.is_dir():
        raise DatasetImportError(f"{src} does not exist. Pass the {what} ({name}) or the folder holding it.")
    for candidate in (src / name, *sorted(src.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    raise DatasetImportError(f"no {name} in {src} (nor one folder down). Pass the {what} ({name}) or the folder holding it.")


def _iter_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str], str | None]]:
    """Data rows of a CSV as ``(line number, {lower-case column: value}, problem)``; blank lines skipped.

    ``problem`` is set when the row has the wrong number of columns.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetImportError(f"{path} is empty: expected a header line with columns {', '.join(required)}.")
        names = [h.strip().lower() for h in header]
        missing = [c for c in required if c.lower() not in names]
        if missing:
            raise DatasetImportError(
                f"{path} line 1: missing column(s) {', '.join(missing)} (header: {', '.join(h.strip() for h in header)}). "
                "Is this the right file for this format? See `prepare-data --help`."
            )
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            problem = None if len(values) == len(names) else f"{len(values)} columns, expected {len(names)}"
            yield reader.line_num, dict(zip(names, values, strict=False)), problem


def _parse_pixels(text: str) -> tuple[np.ndarray | None, str]:
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


def _fer_name(index: int) -> str:
    """FER2013 row ``index`` (0-based) -> ``fer0000012.png``, the naming FERPlus uses."""
    return f"fer{index:07d}.png"


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


def jaffe_label(file_name: str) -> str | None:
    """Label of a JAFFE-style name ``KA.AN1.39.tiff`` (second token's first two letters), else None."""
    tokens = file_name.split(".")
    if len(tokens) >= 3:
        return JAFFE_CODES.get(tokens[1][:2].upper())
    return None


def _id_or_name(folder: Path, ids: Sequence[str], what: str) -> str:
    """Class of a folder named by a numeric id (``ids[i]``) or by a class name (any alias, or contempt)."""
    name = folder.name.strip()
    if name.isdigit():
        if int(name) < len(ids):
            return ids[int(name)]
    elif normalize_name(name) == CONTEMPT:
        return CONTEMPT
    else:
        label = try_canonical_name(name)
        if label is not None:
            return label
    listing = ", ".join(f"{i} {c}" for i, c in enumerate(ids))
    raise DatasetImportError(
        f"{folder}: {name!r} is not a class id or class name of {what}: expected an id ({listing}) or a name "
        f"({', '.join(CANONICAL_CLASSES)}, {CONTEMPT}, or an alias such as happy/angry/sad). "
        "Rename or remove the folder."
    )


# --- the importers ---------------------------------------------------------------------------
@dataclass
class ImportOptions:
    bad_rows: BadRowPolicy = "error"
    contempt: str = "drop"
    val_fraction: float = 0.2
    seed: int = 0
    labels: Path | None = None


class _Importer:
    """One source format: where its inputs are, their fingerprint, and the plan."""

    name = ""
    options: tuple[str, ...] = ("bad_rows",)

    def __init__(self, src: Path, opts: ImportOptions) -> None:
        self.src = src
        self.opts = opts
        self.items = _Items(opts.bad_rows)

    def inputs(self) -> tuple[list[Path], list[Path]]:
        """(files hashed whole, folders hashed as their listing); checks that they exist."""
        raise NotImplementedError

    def plan(self) -> ImportPlan:
        raise NotImplementedError

    def source(self) -> Path:
        """What identifies the source in the manifest (the main input file or folder)."""
        return self.src

    def fingerprint(self) -> dict[str, str]:
        files, folders = self.inputs()
        out = {str(p): f"sha256:{sha256_file(p)}" for p in files}
        out.update({str(p): f"listing-sha256:{_listing_digest(p)}" for p in folders})
        return out


class Fer2013Importer(_Importer):
    """FER2013 ``emotion,pixels,Usage`` CSV; each row becomes a 48x48 grayscale PNG ``fer%07d.png``."""

    name = "fer2013"

    def inputs(self):
        return [_find_file(self.src, "fer2013.csv", "FER2013 CSV")], []

    def source(self) -> Path:
        return self.inputs()[0][0]

    def plan(self) -> ImportPlan:
        path = self.inputs()[0][0]
        files: list[PlannedFile] = []
        rows = _iter_csv(path, ("emotion", "pixels", "Usage"))
        for index, (line, row, problem) in enumerate(_progress(rows, "read fer2013.csv")):
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
            pixels, problem = _parse_pixels(row["pixels"])
            if pixels is None:
                self.items.bad(origin, "bad row: pixels", problem, fix)
                continue
            files.append(PlannedFile(split, FER2013_EMOTIONS[int(emotion)], _fer_name(index), origin, pixels=pixels))
        splits = {s: f"FER2013 Usage={u}" for u, s in FER2013_USAGE.items()}
        return ImportPlan(files, self.items.dropped, splits)


class FerPlusImporter(_Importer):
    """FERPlus votes (``fer2013new.csv``) over the FER2013 pixels (``fer2013.csv``), row i with row i.

    The label is the majority (plurality) of the 10 vote columns; ties, ``unknown``, ``NF``
    (not a face), rows without votes or without an image name are dropped and counted;
    contempt follows ``--contempt``.
    """

    name = "ferplus"
    options = ("bad_rows", "contempt", "labels")

    def inputs(self):
        pixels = _find_file(self.src, "fer2013.csv", "FER2013 CSV")
        labels = self.opts.labels
        if labels is None:
            folder = self.src if self.src.is_dir() else self.src.parent
            labels = _find_file(folder, "fer2013new.csv", "FERPlus label file")
        elif not labels.is_file():
            raise DatasetImportError(f"--labels {labels}: no such file. Pass FERPlus's fer2013new.csv.")
        return [pixels, labels], []

    def source(self) -> Path:
        return self.inputs()[0][0]

    def plan(self) -> ImportPlan:
        (pixels_path, labels_path), _ = self.inputs()
        contempt = _contempt_folder(self.opts.contempt)
        label_rows = _iter_csv(labels_path, ("Usage", "Image name", *FERPLUS_VOTES))
        pixel_rows = _iter_csv(pixels_path, ("pixels",))
        files: list[PlannedFile] = []
        pairs = zip_longest(label_rows, pixel_rows)
        for index, (labelled, pixel_row) in enumerate(_progress(pairs, "read fer2013new.csv")):
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
            folder = _class_folder(winner, contempt, self.items, origin)
            if folder is None:
                continue
            pixels, problem = (None, pixel_row[2]) if pixel_row[2] else _parse_pixels(pixel_row[1]["pixels"])
            if pixels is None:
                self.items.bad(f"{pixels_path} line {pixel_row[0]}", "bad row: pixels", problem, "Fix or delete that row in both files")
                continue
            name = Path(image_name).stem + ".png"
            files.append(PlannedFile(split, folder, name, origin, pixels=pixels, fallback_name=_fer_name(index)))
        splits = {s: f"FER2013 Usage={u}, labels by FERPlus majority vote" for u, s in FER2013_USAGE.items()}
        return ImportPlan(files, self.items.dropped, splits)


class RafDbImporter(_Importer):
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/<name>_aligned.jpg``."""

    name = "rafdb"

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
        for line_no, text in enumerate(_progress(lines, "check RAF-DB images"), start=1):
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
            problem = _image_problem(path)
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


class _FolderImporter(_Importer):
    """Shared by the folder formats: list image files, check each, drop non-images (counted)."""

    options = ("bad_rows", "contempt")

    def inputs(self):
        if not self.src.is_dir():
            raise DatasetImportError(f"{self.src} is not a folder. SRC must be the dataset's top folder.")
        return [], [self.src]

    def _images(self, folder: Path, label: str, split: str, contempt: str | None) -> list[PlannedFile]:
        """Image files under ``folder`` (recursively, hidden ones skipped) as planned files of ``label``."""
        paths = sorted(p for p in folder.rglob("*") if p.is_file())
        visible = [p for p in paths if not any(map(_is_hidden, p.relative_to(self.src).parents))]
        planned = (self._file(p, label, split, contempt) for p in visible)
        return [f for f in planned if f is not None]

    def _file(self, path: Path, label: str | None, split: str, contempt: str | None) -> PlannedFile | None:
        """One source file as a planned file; ``label`` None reads it from the file name."""
        origin = str(path)
        if _is_hidden(path):
            return None
        if not is_image_path(path):
            self.items.drop(origin, "not an image file")
            return None
        if label is None:
            label = jaffe_label(path.name) or label_from_filename(path.stem)
            if label is None:
                self.items.bad(
                    origin, "no label in the file name",
                    f"no emotion in the file name {path.name!r}: expected JAFFE-style SUBJECT.CODEn.N.ext with CODE "
                    f"one of {' '.join(JAFFE_CODES)} (e.g. KA.AN1.39.tiff) or a class name (anger_1.jpg)",
                    "Rename the file or move it into a class folder",
                )
                return None
        problem = _image_problem(path)
        if problem:
            self.items.bad(origin, "unreadable image", problem, "Replace or delete the file")
            return None
        folder = _class_folder(label, contempt, self.items, origin)
        if folder is None:
            return None
        return PlannedFile(split, folder, path.name, origin, source=path, fallback_name=_flat_name(path.relative_to(self.src)))


class AffectNetImporter(_FolderImporter):
    """AffectNet as class-id folders ``SRC/<split>/<id>/`` (or English class names); splits train, val."""

    name = "affectnet"

    def plan(self) -> ImportPlan:
        contempt = _contempt_folder(self.opts.contempt)
        split_dirs: dict[str, Path] = {}
        for folder in sorted(p for p in self.src.iterdir() if p.is_dir() and not _is_hidden(p)):
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
            for loose in sorted(p for p in split_dir.iterdir() if p.is_file() and not _is_hidden(p)):
                self.items.drop(str(loose), "not in a class folder")
            class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not _is_hidden(p))
            labels = {d: _id_or_name(d, AFFECTNET_IDS, "AffectNet") for d in class_dirs}
            for class_dir in _progress(class_dirs, f"check AffectNet {split}"):
                files.extend(self._images(class_dir, labels[class_dir], split, contempt))
        splits = {s: f"AffectNet {d.name}/" for s, d in split_dirs.items()}
        return ImportPlan(files, self.items.dropped, splits)


class FilenamesImporter(_FolderImporter):
    """File-name-labelled sets without splits: JAFFE-style names and CK+-style class folders.

    Top-level image files take their label from the name (``KA.AN1.39.tiff``, or ``anger_1.jpg``);
    images in ``SRC/<label>/`` (any alias, or CK+ ids 0..7) take the folder's. The validation
    split is drawn here: seeded, stratified by class, by image (not by subject).
    """

    name = "filenames"
    options = ("bad_rows", "contempt", "val_fraction", "seed")

    def plan(self) -> ImportPlan:
        frac = self.opts.val_fraction
        if not 0.0 < frac < 1.0:
            raise DatasetImportError(f"--val-fraction {frac}: must be between 0 and 1 (exclusive), e.g. 0.2.")
        contempt = _contempt_folder(self.opts.contempt)
        entries = sorted(p for p in self.src.iterdir() if not _is_hidden(p))
        class_dirs = [p for p in entries if p.is_dir()]
        labels = {d: _id_or_name(d, CKPLUS_IDS, "CK+") for d in class_dirs}
        planned = [self._file(p, None, "train", contempt) for p in _progress(entries, "check files") if p.is_file()]
        files = [f for f in planned if f is not None]
        for class_dir in class_dirs:
            files.extend(self._images(class_dir, labels[class_dir], "train", contempt))
        self._split(files, frac, self.opts.seed)
        how = f"seeded stratified split by class (val_fraction={frac}, seed={self.opts.seed}), by image, not by subject"
        note = f"No split in the source: validation/ is a {how}."
        return ImportPlan(files, self.items.dropped, {"train": how, "validation": how}, notes=[note])

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


IMPORTERS: dict[str, type[_Importer]] = {
    cls.name: cls for cls in (Fer2013Importer, FerPlusImporter, RafDbImporter, AffectNetImporter, FilenamesImporter)
}
FORMATS: tuple[str, ...] = tuple(IMPORTERS)


# --- writing ---------------------------------------------------------------------------------
def _unique_names(files: list[PlannedFile]) -> None:
    """Give files that would share a path their fallback name (derived from the source path)."""
    by_path: dict[str, list[PlannedFile]] = defaultdict(list)
    for f in files:
        by_path[f.relpath].append(f)
    for group in by_path.values():
        if len(group) > 1:
            for f in group:
                f.name = f.fallback_name or f.name
    final = Counter(f.relpath for f in files)
    clash = next((p for p, n in final.items() if n > 1), None)
    if clash:
        origins = [f.origin for f in files if f.relpath == clash]
        raise DatasetImportError(f"{' and '.join(origins[:2])} would both be written as {clash}; rename one of them.")


def _encode(f: PlannedFile) -> bytes:
    if f.pixels is not None:
        buffer = io.BytesIO()
        Image.fromarray(f.pixels).save(buffer, format="PNG")
        return buffer.getvalue()
    assert f.source is not None
    return f.source.read_bytes()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a killed import leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _read_manifest(dest: Path) -> dict[str, Any] | None:
    path = dest / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetImportError(f"{path} is not valid JSON ({err}). Delete it, or pass --force to import anew.") from err
    if not isinstance(manifest, dict) or "format" not in manifest or "source" not in manifest:
        raise DatasetImportError(f"{path} is not a prepare-data manifest. Choose another DEST, or pass --force.")
    return manifest


def _files_intact(dest: Path, files: dict[str, str | None]) -> bool:
    for rel, sha in _progress(files.items(), "verify", total=len(files)):
        path = dest / rel
        if sha is None or not path.is_file() or sha256_file(path) != sha:
            return False
    return True


def _files_under_splits(dest: Path) -> set[str]:
    found: set[str] = set()
    for split in SPLITS:
        folder = dest / split
        if folder.is_dir():
            found.update(p.relative_to(dest).as_posix() for p in folder.rglob("*") if p.is_file())
    return found


def _prune_empty_dirs(dest: Path) -> None:
    for split in SPLITS:
        folder = dest / split
        if not folder.is_dir():
            continue
        for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()


def count_files(files: Sequence[PlannedFile]) -> dict[str, dict[str, int]]:
    """Images per split and class, zero-filled over the 7 classes (plus any extra folder, e.g. contempt)."""
    classes = list(CANONICAL_CLASSES) + sorted({f.label for f in files} - set(CANONICAL_CLASSES))
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        in_split = Counter(f.label for f in files if f.split == split)
        if in_split:
            counts[split] = {c: in_split.get(c, 0) for c in classes}
    return counts


def format_import_table(manifest: dict[str, Any]) -> str:
    """Images per class (rows) and split (columns), totals, and dropped items by reason."""
    counts: dict[str, dict[str, int]] = manifest["counts"]
    splits = list(counts)
    classes = list(next(iter(counts.values()))) if counts else list(CANONICAL_CLASSES)
    lines = [f"{'class':<11}" + "".join(f"{s:>12}" for s in splits)]
    for c in classes:
        lines.append(f"{c:<11}" + "".join(f"{counts[s][c]:>12}" for s in splits))
    lines.append(f"{'total':<11}" + "".join(f"{sum(counts[s].values()):>12}" for s in splits))
    dropped = manifest["dropped"]
    if dropped["total"]:
        reasons = ", ".join(f"{r} {n}" for r, n in dropped["by_reason"].items())
        lines.append(f"dropped {dropped['total']}: {reasons}")
    else:
        lines.append("dropped 0")
    return "\n".join(lines)


def _resolve_options(fmt: str, given: dict[str, Any]) -> ImportOptions:
    """Options with their defaults; one the format does not use is logged and ignored."""
    if given["bad_rows"] not in (None, "error", "skip"):
        raise DatasetImportError(f"bad_rows={given['bad_rows']!r}: use 'error' or 'skip'.")
    for key, value in given.items():
        if value is not None and key not in IMPORTERS[fmt].options:
            log.warning("--%s is not used by the %s importer; ignored", key.replace("_", "-"), fmt)
    defaults = ImportOptions()
    return ImportOptions(
        bad_rows=given["bad_rows"] or defaults.bad_rows,
        contempt=given["contempt"] or defaults.contempt,
        val_fraction=defaults.val_fraction if given["val_fraction"] is None else float(given["val_fraction"]),
        seed=defaults.seed if given["seed"] is None else int(given["seed"]),
        labels=None if given["labels"] is None else Path(given["labels"]).expanduser().resolve(),
    )


def _check_dest(dest: Path, identity: dict[str, str], force: bool) -> dict[str, Any] | None:
    """The manifest already in ``dest`` (None if none); refuses a DEST of another import unless ``force``."""
    if dest.exists() and not dest.is_dir():
        raise DatasetImportError(f"DEST {dest} is a file; choose a folder.")
    old = _read_manifest(dest)
    if old is not None and (old["format"], old["source"]) != (identity["format"], identity["source"]):
        if not force:
            raise DatasetImportError(
                f"{dest} holds a {old['format']} import of {old['source']} ({MANIFEST}), not {identity['format']} "
                f"of {identity['source']}. Choose another DEST, or pass --force to replace it (the files its "
                "manifest lists are removed)."
            )
        log.warning("--force: replacing the %s import of %s in %s", old["format"], old["source"], dest)
    elif old is None and dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise DatasetImportError(
                f"{dest} is not empty and has no {MANIFEST} (it was not written by prepare-data). Choose a new or "
                "empty folder, or pass --force to import into it anyway (files already there are kept)."
            )
        log.warning("--force: importing into %s, which already holds files not written by prepare-data", dest)
    return old


def _build_manifest(identity: dict[str, str], options: dict[str, Any], fingerprint: dict[str, str], plan: ImportPlan) -> dict[str, Any]:
    """The manifest of a planned import; ``files`` (path -> sha256) is filled in as files are written."""
    return {
        "version": MANIFEST_VERSION,
        "tool": "research prepare-data",
        **identity,
        "complete": True,
        "options": options,
        "source_files": fingerprint,
        "splits": plan.splits,
        "notes": plan.notes,
        "classes": list(CANONICAL_CLASSES),
        "counts": count_files(plan.files),
        "total": len(plan.files),
        "dropped": {
            "total": len(plan.dropped),
            "by_reason": dict(sorted(Counter(d.reason for d in plan.dropped).items())),
            "items": [
                {"origin": d.origin, "reason": d.reason, **({"detail": d.detail} if d.detail else {})}
                for d in plan.dropped
            ],
        },
        "files": {},
    }


def _write_files(dest: Path, plan: ImportPlan, manifest: dict[str, Any], previous: dict[str, str | None]) -> tuple[int, int, int]:
    """Write the planned files whose bytes are not already there, remove stale ones of an earlier import.

    Before the first change, the manifest is written marked incomplete and listing every file this
    or the earlier import may have written, so a killed import can be rerun (or replaced) cleanly.
    Returns (written, unchanged, removed).
    """
    started = False

    def begin() -> None:
        nonlocal started
        if not started:
            pending = {**previous, **{f.relpath: previous.get(f.relpath) for f in plan.files}}
            _write_atomic(dest / MANIFEST, _json_text({**manifest, "complete": False, "files": pending}).encode())
            started = True

    written = unchanged = removed = 0
    for f in _progress(plan.files, f"write {dest.name}"):
        data = _encode(f)
        sha = hashlib.sha256(data).hexdigest()
        target = dest / f.relpath
        if target.is_file() and sha256_file(target) == sha:
            unchanged += 1
        else:
            begin()
            _write_atomic(target, data)
            written += 1
        manifest["files"][f.relpath] = sha
    for rel in sorted(set(previous) - set(manifest["files"])):
        if (dest / rel).is_file():
            begin()
            (dest / rel).unlink()
            removed += 1
    if removed:
        _prune_empty_dirs(dest)
    return written, unchanged, removed


def import_dataset(
    fmt: str,
    src: str | Path,
    dest: str | Path,
    *,
    bad_rows: BadRowPolicy | None = None,
    contempt: str | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    labels: str | Path | None = None,
    force: bool = False,
) -> ImportResult:
    """Import ``src`` (in format ``fmt``) into ``dest`` as class folders plus ``manifest.json``.

    Options left as None take their defaults (``bad_rows="error"``, ``contempt="drop"``,
    ``val_fraction=0.2``, ``seed=0``); one given to a format that does not use it is logged
    and ignored.

    Raises:
        DatasetImportError: unknown format, missing or malformed source, a bad row (unless
            ``bad_rows="skip"``), or a DEST holding another import (unless ``force``).
    """
    if fmt not in IMPORTERS:
        raise DatasetImportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    given = {"bad_rows": bad_rows, "contempt": contempt, "val_fraction": val_fraction, "seed": seed, "labels": labels}
    opts = _resolve_options(fmt, given)
    src_path = Path(src).expanduser().resolve()
    dest_path = Path(dest).expanduser().resolve()
    if not src_path.exists():
        raise DatasetImportError(f"SRC {src_path} does not exist.")
    if dest_path == src_path or src_path in dest_path.parents:
        raise DatasetImportError(f"DEST {dest_path} is inside SRC {src_path}: choose a DEST outside the source.")
    importer = IMPORTERS[fmt](src_path, opts)
    identity = {"format": fmt, "source": str(importer.source())}
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k in importer.options}
    old = _check_dest(dest_path, identity, force)

    fingerprint = importer.fingerprint()
    if (
        old is not None
        and old.get("complete")
        and old.get("version") == MANIFEST_VERSION
        and {k: old.get(k) for k in identity} == identity
        and old.get("options") == options
        and old.get("source_files") == fingerprint
        and _files_intact(dest_path, old.get("files", {}))
    ):
        log.info(
            "%s already holds this import (same source, options and file checksums); nothing to do\n%s",
            dest_path, format_import_table(old),
        )
        return ImportResult(dest_path, old, written=0, unchanged=len(old["files"]), removed=0, up_to_date=True)

    log.info("planning the %s import of %s", fmt, identity["source"])
    plan = importer.plan()
    if not plan.files:
        raise DatasetImportError(
            f"{src_path}: nothing to import ({len(plan.dropped)} item(s) dropped). Is this a {fmt} source?"
        )
    _unique_names(plan.files)
    plan.files.sort(key=lambda f: f.relpath)
    manifest = _build_manifest(identity, options, fingerprint, plan)
    previous = dict(old.get("files", {})) if old is not None else {}
    written, unchanged, removed = _write_files(dest_path, plan, manifest, previous)

    foreign = sorted(_files_under_splits(dest_path) - set(manifest["files"]))
    if foreign:
        log.warning(
            "%s holds %d file(s) this import did not write (the data layer reads them too), e.g. %s",
            dest_path, len(foreign), ", ".join(foreign[:3]),
        )
    text = _json_text(manifest)
    manifest_path = dest_path / MANIFEST
    manifest_changed = not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != text
    if manifest_changed:
        _write_atomic(manifest_path, text.encode())
    if written or removed:
        log.info("%s: %d file(s) written, %d already there unchanged, %d stale removed", dest_path, written, unchanged, removed)
    else:
        log.info("%s already holds every file of this import; %s", dest_path, f"{MANIFEST} updated" if manifest_changed else "nothing changed")
    if any(CONTEMPT in per_class for per_class in manifest["counts"].values()):
        log.warning(
            "contempt/ is not one of the 7 classes and the training data layer stops on it: move it out "
            "before training, or import with --contempt drop or --contempt map:CLASS."
        )
    missing = [c for c in CANONICAL_CLASSES if not manifest["counts"].get("train", {}).get(c)]
    if missing:
        log.warning("no train images of %s: train with data.require_all_classes=false", ", ".join(missing))
    log.info("%s import of %s: %d images\n%s", fmt, identity["source"], len(plan.files), format_import_table(manifest))
    up_to_date = not (written or removed or manifest_changed)
    return ImportResult(dest_path, manifest, written=written, unchanged=unchanged, removed=removed, up_to_date=up_to_date)
