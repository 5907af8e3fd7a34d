"""Fetch the course dataset (a zip on Google Drive) with gdown, unpack it and verify its layout."""

from __future__ import annotations

import hashlib
import logging
import os
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
# The course zip's sha256 is not recorded: this project's machines cannot reach Google Drive. fetch-data logs the
# sha256 of every zip it unpacks; record it here (or pass --sha256) to have every later download checked.
COURSE_SHA256: str | None = None
DEFAULT_TIMEOUT = 60.0  # seconds without a byte from Drive before an attempt fails
DEFAULT_RETRIES = 3  # further attempts, each resuming the transfer


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(zip_path: Path, expected: str | None) -> str:
    """The zip's sha256, compared with ``expected`` when there is one; a mismatch removes a downloaded file."""
    actual = file_sha256(zip_path)
    if expected is not None and actual != expected.lower():
        raise DownloadError(
            f"{zip_path} has sha256 {actual}, expected {expected.lower()}: the file is damaged or not the course zip "
            "(a Drive error page, another version). Delete it and run fetch-data again, or check the --sha256 value"
        )
    return actual


def download_zip(
    drive_id: str, destination: Path, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
    cookies_file: Path | None = None,
) -> Path:
    """Download a Google Drive file with gdown to ``destination``: ``timeout`` seconds without a byte is a failure,
    ``retries`` more attempts resume the transfer, and an interrupted download resumes on the next call (gdown's
    partial file beside ``destination``). ``cookies_file``: a browser's Netscape cookies for Drive's "too many
    users" page. Each failure is one :class:`DownloadError` saying what to do; ``destination`` exists only complete."""
    import gdown

    destination.parent.mkdir(parents=True, exist_ok=True)
    if cookies_file is not None and not Path(cookies_file).expanduser().is_file():
        raise DownloadError(f"--cookies-file {cookies_file} not found; export Google's cookies from a browser (Netscape format)")
    log.info("downloading Google Drive file %s to %s (timeout %ss, %d retries)", drive_id, destination, timeout, retries)
    browser = f"download it in a browser (https://drive.google.com/uc?id={drive_id}) and run `poetry run fetch-data --zip PATH`"
    try:
        result = gdown.download(
            id=drive_id, output=str(destination), quiet=False, resume=True, timeout=timeout, retries=retries,
            cookies_file=None if cookies_file is None else str(Path(cookies_file).expanduser()),
        )
    except gdown.exceptions.FileURLRetrievalError as err:  # Drive's "too many users" / permission page
        raise DownloadError(
            f"Google Drive refused file {drive_id} ({str(err).splitlines()[0][:160]}): the file is rate-limited ('too "
            "many users') or private. Log in to Google in a browser, export its cookies (Netscape format) and run "
            f"fetch-data --cookies-file FILE; or {browser}"
        ) from None
    except Exception as err:  # requests/urllib/socket errors of many kinds when offline or on a timeout
        raise DownloadError(
            f"could not download Google Drive file {drive_id} ({type(err).__name__}: {str(err)[:200]}). Run the same "
            f"command again to resume; if this machine is offline, {browser}"
        ) from None
    if result is None or not destination.is_file():
        raise DownloadError(f"gdown returned no file for {drive_id} (quota exceeded or permission denied?); {browser}")
    return destination


def extract_dataset(zip_path: Path, data_dir: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    """Unpack ``zip_path`` into a temporary folder beside ``data_dir/dataset_emociones``, check its layout there,
    and only then move it into place (replacing what was there). A bad zip leaves ``data_dir`` as it was."""
    if not zipfile.is_zipfile(zip_path):
        raise DownloadError(f"{zip_path} is not a zip file (a Drive error page?). Delete it and retry.")
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{COURSE_FOLDER}.extracting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            bad = [n for n in archive.namelist() if n.startswith("/") or ".." in Path(n).parts]
            if bad:
                raise DownloadError(f"{zip_path} has unsafe paths, e.g. {bad[0]}; refusing to unpack.")
            archive.extractall(tmp)
        try:
            found = find_dataset_root(tmp)
            counts = verify_layout(found)
        except DatasetLayoutError as err:
            raise DatasetLayoutError(f"{zip_path}: {str(err).replace(str(tmp), 'the zip')}; nothing was unpacked") from None
        target = data_dir / COURSE_FOLDER
        old = data_dir / f".{COURSE_FOLDER}.replaced-{os.getpid()}"
        if target.exists():
            target.replace(old)
        found.replace(target)
        shutil.rmtree(old, ignore_errors=True)
        return target, counts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_course_dataset(
    data_dir: Path = DEFAULT_DATA_DIR, *, zip_path: Path | None = None, drive_id: str = COURSE_DRIVE_ID, force: bool = False,
    sha256: str | None = None, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, cookies_file: Path | None = None,
) -> tuple[Path, dict[str, dict[str, int]]]:
    """Make the course dataset available under ``data_dir``; returns its root and class counts.

    Idempotent: when a verified dataset is already there, nothing is downloaded or unpacked. The zip's sha256
    is checked against ``sha256`` (or the recorded one of the course zip) and logged; the dataset folder appears
    only after the unpacked zip passed the layout checks.
    """
    data_dir = Path(data_dir)
    for leftover in data_dir.glob(f".{COURSE_FOLDER}.*-*") if data_dir.is_dir() else []:  # a killed earlier call
        shutil.rmtree(leftover, ignore_errors=True)
    if not force and data_dir.is_dir():
        try:
            root = find_dataset_root(data_dir)
            counts = verify_layout(root)
            log.info("dataset already present at %s; nothing to do (use --force to fetch again)", root)
            return root, counts
        except DatasetLayoutError:
            pass
    expected = sha256 or (COURSE_SHA256 if drive_id == COURSE_DRIVE_ID else None)
    downloaded = zip_path is None
    if zip_path is None:
        zip_path = data_dir / f"{COURSE_FOLDER}.zip"
        if force or not zip_path.exists():
            zip_path.unlink(missing_ok=True)
            download_zip(drive_id, zip_path, timeout=timeout, retries=retries, cookies_file=cookies_file)
    elif not Path(zip_path).exists():
        raise DownloadError(f"zip file {zip_path} not found")
    try:
        digest = check_sha256(Path(zip_path), expected)
    except DownloadError:
        if downloaded:  # a damaged download is not kept as if complete
            Path(zip_path).unlink(missing_ok=True)
        raise
    log.info("%s: sha256 %s%s", zip_path, digest, " (as expected)" if expected else " (pass --sha256 to check it next time)")
    return extract_dataset(Path(zip_path), data_dir)
