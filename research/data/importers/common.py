"""What every importer shares: the plan of an import (files to write, items dropped), the bad-row
policy, the source helpers (CSV rows, class folders, image checks) and the :class:`Importer` base.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from research.data.classes import (
    CANONICAL_CLASSES,
    normalize_name,
    try_canonical_name,
)
from research.data.download import file_sha256
from research.data.images import is_image_path
from research.errors import UserError

BadRowPolicy = Literal["error", "skip"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
CONTEMPT = "contempt"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SKIP_HINT = "or pass --bad-rows skip to leave such items out (they are counted in manifest.json)"


class DatasetImportError(UserError, ValueError):
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


class Items:
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
def listing_digest(root: Path) -> str:
    """sha256 of the sorted (relative path, size) list of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def progress(iterable, desc: str, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, unit="item", leave=False, disable=None)


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"__MACOSX", "Thumbs.db"}


def image_problem(path: Path) -> str | None:
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


def flat_name(rel: Path) -> str:
    """A relative source path as one file name: ``train/1/x.jpg`` -> ``train__1__x.jpg``."""
    return "__".join(rel.parts)


def contempt_folder(policy: str) -> str | None:
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


def class_folder(label: str, contempt: str | None, items: Items, origin: str) -> str | None:
    """Folder for a canonical label or contempt; None (and a counted drop) for dropped contempt."""
    if label != CONTEMPT:
        return label
    if contempt is None:
        items.drop(origin, "contempt", "contempt is not one of the 7 classes (--contempt keep or map:CLASS)")
    return contempt


ARCHIVE_MAGIC = (
    (b"PK\x03\x04", "zip archive", "unzip FILE"), (b"\x1f\x8b", "gzip-compressed file (.tar.gz?)", "tar -xzf FILE"),
    (b"BZh", "bzip2-compressed file (.tar.bz2?)", "tar -xjf FILE"), (b"\xfd7zXZ\x00", "xz-compressed file (.tar.xz?)", "tar -xJf FILE"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive", "7z x FILE"), (b"Rar!", "RAR archive", "unrar x FILE"),
)


def check_source_file(src: Path, fmt: str, expects: str) -> None:
    """SRC given as an archive or an image file: say what it is and what the format expects (reading it as
    a CSV would fail with a decoding error)."""
    if not src.is_file():
        return
    with src.open("rb") as fh:
        head = fh.read(512)
    found = next(((what, how) for magic, what, how in ARCHIVE_MAGIC if head.startswith(magic)), None)
    if found is None and len(head) >= 262 and head[257:262] == b"ustar":
        found = ("tar archive", "tar -xf FILE")
    if found is not None:
        what, how = found
        raise DatasetImportError(
            f"SRC {src} is a {what}; {fmt} expects {expects}. Unpack it first (`{how.replace('FILE', str(src))}`) "
            "and pass what it holds."
        )
    if is_image_path(src) or image_problem(src) is None:
        raise DatasetImportError(f"SRC {src} is an image file; {fmt} expects {expects}.")


def find_file(src: Path, name: str, what: str) -> Path:
    """``src`` itself when it is a file, else ``src/name`` or ``src/*/name``."""
    if src.is_file():
        return src
    if not src.is_dir():
        raise DatasetImportError(f"{src} does not exist. Pass the {what} ({name}) or the folder holding it.")
    for candidate in (src / name, *sorted(src.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    raise DatasetImportError(f"no {name} in {src} (nor one folder down). Pass the {what} ({name}) or the folder holding it.")


def iter_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str], str | None]]:
    """Data rows of a CSV as ``(line number, {lower-case column: value}, problem)``; blank lines skipped.

    ``problem`` is set when the row has the wrong number of columns. A file that is not UTF-8 text
    (an archive, an image) is a :class:`DatasetImportError`.
    """
    try:
        yield from _csv_rows(path, required)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetImportError(
            f"{path} is not a text CSV ({err}); expected columns {', '.join(required)}. Pass the CSV itself "
            "(unpacked, not an archive) or the folder holding it."
        ) from None


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str], str | None]]:
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


def id_or_name(folder: Path, ids: Sequence[str], what: str) -> str:
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


class Importer:
    """One source format: where its inputs are, their fingerprint, and the plan."""

    name = ""
    expects = ""  # what SRC must be, for messages
    options: tuple[str, ...] = ("bad_rows",)

    def __init__(self, src: Path, opts: ImportOptions) -> None:
        self.src = src
        self.opts = opts
        self.items = Items(opts.bad_rows)

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
        out = {str(p): f"sha256:{file_sha256(p)}" for p in files}
        out.update({str(p): f"listing-sha256:{listing_digest(p)}" for p in folders})
        return out


class FolderImporter(Importer):
    """Shared by the folder formats: list image files, check each, drop non-images (counted)."""

    options = ("bad_rows", "contempt")

    def inputs(self):
        if not self.src.is_dir():
            raise DatasetImportError(f"{self.src} is not a folder. SRC must be the dataset's top folder.")
        return [], [self.src]

    def _images(self, folder: Path, label: str, split: str, contempt: str | None) -> list[PlannedFile]:
        """Image files under ``folder`` (recursively, hidden ones skipped) as planned files of ``label``."""
        paths = sorted(p for p in folder.rglob("*") if p.is_file())
        visible = [p for p in paths if not any(map(is_hidden, p.relative_to(self.src).parents))]
        planned = (self._file(p, label, split, contempt) for p in visible)
        return [f for f in planned if f is not None]

    def label_from_name(self, path: Path) -> str | None:
        """The class a file name carries, for files outside class folders; None (a counted bad item) when none."""
        raise NotImplementedError

    def _file(self, path: Path, label: str | None, split: str, contempt: str | None) -> PlannedFile | None:
        """One source file as a planned file; ``label`` None reads it from the file name."""
        origin = str(path)
        if is_hidden(path):
            return None
        if not is_image_path(path):
            self.items.drop(origin, "not an image file")
            return None
        if label is None:
            label = self.label_from_name(path)
            if label is None:
                return None
        problem = image_problem(path)
        if problem:
            self.items.bad(origin, "unreadable image", problem, "Replace or delete the file")
            return None
        folder = class_folder(label, contempt, self.items, origin)
        if folder is None:
            return None
        return PlannedFile(split, folder, path.name, origin, source=path, fallback_name=flat_name(path.relative_to(self.src)))
