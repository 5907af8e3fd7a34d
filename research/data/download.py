"""Fetch the course dataset (a zip on Google Drive) with gdown, unpack it and verify its layout."""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

from research.data.classes import CANONICAL_CLASSES, SPANISH_NAMES
from research.data.datasets import DatasetLayoutError, find_split_dir, scan_split
from research.errors import UserError

log = logging.getLogger(__name__)

COURSE_DRIVE_ID = "1aPHE00zkDhEV1waJKhaOJMdN6-lUc0iT"
COURSE_FOLDER = "dataset_emociones"
DEFAULT_DATA_DIR = Path("data")


class DownloadError(UserError, RuntimeError):
    """The dataset could not be downloaded; the message says what to do instead."""


def find_dataset_root(folder: Path) -> Path:
    """The folder holding ``train/`` and ``validation/`` inside an unpacked archive.

    Prefers ``dataset_emociones/``; otherwise the shallowest folder that has both splits.
    """
    candidates = [folder / COURSE_FOLDER, *sorted(folder.rglob(COURSE_FOLDER))]
    candidates += sorted((p.parent for p in folder.rglob("train") if p.is_dir()), key=lambda p: len(p.parts))
    for candidate in candidates:
        if (candidate / "train").is_dir() and any(
            (candidate / name).is_dir() for name in ("validation", "val", "valid")
        ):
            return candidate
    raise DatasetLayoutError(
        f"no folder with train/ and validation/ found under {folder}. The course zip should contain "
        f"{COURSE_FOLDER}/train and {COURSE_FOLDER}/validation."
    )


def verify_layout(root: Path) -> dict[str, dict[str, int]]:
    """Check the class folders of both splits (no decoding) and return images per class and split."""
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "validation"):
        scan = scan_split(find_split_dir(root, split), split)
        per_class = Counter(scan.targets)
        counts[split] = {name: per_class.get(i, 0) for i, name in enumerate(CANONICAL_CLASSES)}
        if scan.not_images:
            log.warning("%s: %d non-image files (e.g. %s)", split, len(scan.not_images), scan.not_images[0])
    if {c for c, n in counts["train"].items() if n} != {c for c, n in counts["validation"].items() if n}:
        raise DatasetLayoutError(f"train and validation in {root} hold different classes: {counts}")
    return counts


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    """A small text table of images per class and split."""
    lines = [f"{'class':<11}{'folder':<10}{'train':>7}{'validation':>12}"]
    for name in CANONICAL_CLASSES:
        lines.append(
            f"{name:<11}{SPANISH_NAMES[name]:<10}{counts['train'][name]:>7}{counts['validation'][name]:>12}"
        )
    lines.append(f"{'total':<21}{sum(counts['train'].values()):>7}{sum(counts['validation'].values()):>12}")
    return "\n".join(lines)


def download_zip(drive_id: str, destination: Path) -> Path:
    """Download a Google Drive file with gdown; a clear error when offline."""
    import gdown

    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(destination.suffix + ".part")
    log.info("downloading Google Drive file %s to %s", drive_id, destination)
    try:
        result = gdown.download(id=drive_id, output=str(partial), quiet=False)
    except Exception as err:  # gdown raises requests/urllib errors of many kinds when offline
        raise DownloadError(
            f"could not download Google Drive file {drive_id} ({type(err).__name__}: {err}). "
            "If this machine is offline, download the zip elsewhere "
            f"(https://drive.google.com/uc?id={drive_id}) and run `poetry run fetch-data --zip PATH`."
        ) from err
    if result is None or not partial.exists():
        raise DownloadError(
            f"gdown returned no file for {drive_id} (quota exceeded or permission denied?). "
            "Download it in a browser and use `poetry run fetch-data --zip PATH`."
        )
    partial.replace(destination)
    return destination


def extract_zip(zip_path: Path, out_dir: Path) -> None:
    """Unpack ``zip_path`` into ``out_dir`` via a temporary folder, so a failure leaves no half tree."""
    if not zipfile.is_zipfile(zip_path):
        raise DownloadError(f"{zip_path} is not a zip file (a Drive error page?). Delete it and retry.")
    tmp = out_dir.with_name(out_dir.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        bad = [n for n in archive.namelist() if n.startswith("/") or ".." in Path(n).parts]
        if bad:
            raise DownloadError(f"{zip_path} has unsafe paths, e.g. {bad[0]}; refusing to unpack.")
        archive.extractall(tmp)
    if out_dir.exists():
        _merge(tmp, out_dir)
    else:
        tmp.replace(out_dir)


def _merge(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        target = dst / item.name
        if not target.exists():
            item.replace(target)
    shutil.rmtree(src, ignore_errors=True)


def fetch_course_dataset(
    data_dir: Path = DEFAULT_DATA_DIR, *, zip_path: Path | None = None, drive_id: str = COURSE_DRIVE_ID, force: bool = False
) -> tuple[Path, dict[str, dict[str, int]]]:
    """Make the course dataset available under ``data_dir``; returns its root and class counts.

    Idempotent: when a verified dataset is already there, nothing is downloaded or unpacked.
    """
    data_dir = Path(data_dir)
    if not force and data_dir.is_dir():
        try:
            root = find_dataset_root(data_dir)
            counts = verify_layout(root)
            log.info("dataset already present at %s; nothing to do (use --force to fetch again)", root)
            return root, counts
        except DatasetLayoutError:
            pass
    if zip_path is None:
        zip_path = data_dir / f"{COURSE_FOLDER}.zip"
        if force or not zip_path.exists():
            download_zip(drive_id, zip_path)
    elif not Path(zip_path).exists():
        raise DownloadError(f"zip file {zip_path} not found")
    extract_zip(Path(zip_path), data_dir)
    root = find_dataset_root(data_dir)
    return root, verify_layout(root)
