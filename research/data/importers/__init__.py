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

import logging
from pathlib import Path
from typing import Any

from research.data.classes import CANONICAL_CLASSES
from research.data.importers import writer
from research.data.importers.affectnet import AFFECTNET_IDS, AffectNetImporter
from research.data.importers.common import (
    CONTEMPT,
    MANIFEST,
    MANIFEST_VERSION,
    BadRowPolicy,
    DatasetImportError,
    Importer,
    ImportOptions,
    ImportResult,
    check_source_file,
)
from research.data.importers.fer2013 import FER2013_EMOTIONS, Fer2013Importer
from research.data.importers.ferplus import FERPLUS_VOTES, FerPlusImporter, ferplus_winner
from research.data.importers.filenames import JAFFE_CODES, FilenamesImporter, jaffe_label
from research.data.importers.rafdb import RAFDB_LABELS, RafDbImporter
from research.errors import check_writable

__all__ = [
    "AFFECTNET_IDS", "FER2013_EMOTIONS", "FERPLUS_VOTES", "FORMATS", "IMPORTERS", "JAFFE_CODES", "RAFDB_LABELS",
    "DatasetImportError", "ImportResult", "ferplus_winner", "import_dataset", "jaffe_label",
]

log = logging.getLogger(__name__)

IMPORTERS: dict[str, type[Importer]] = {
    cls.name: cls for cls in (Fer2013Importer, FerPlusImporter, RafDbImporter, AffectNetImporter, FilenamesImporter)
}
FORMATS: tuple[str, ...] = tuple(IMPORTERS)


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
    check_source_file(src_path, fmt, IMPORTERS[fmt].expects)
    check_writable(dest_path)
    importer = IMPORTERS[fmt](src_path, opts)
    identity = {"format": fmt, "source": str(importer.source())}
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k in importer.options}
    old = writer.check_dest(dest_path, identity, force)

    fingerprint = importer.fingerprint()
    if _up_to_date(old, dest_path, identity=identity, options=options, fingerprint=fingerprint):
        log.info(
            "%s already holds this import (same source, options and file checksums); nothing to do\n%s",
            dest_path, writer.format_import_table(old),
        )
        return ImportResult(dest_path, old, written=0, unchanged=len(old["files"]), removed=0, up_to_date=True)

    log.info("planning the %s import of %s", fmt, identity["source"])
    plan = importer.plan()
    if not plan.files:
        raise DatasetImportError(
            f"{src_path}: nothing to import ({len(plan.dropped)} item(s) dropped). Is this a {fmt} source?"
        )
    writer.unique_names(plan.files)
    plan.files.sort(key=lambda f: f.relpath)
    manifest = writer.build_manifest(identity, options, fingerprint, plan)
    previous = dict(old.get("files", {})) if old is not None else {}
    try:
        written, unchanged, removed = writer.write_files(dest_path, plan, manifest, previous)
    except KeyboardInterrupt:
        log.warning("%s", _interrupted_message(dest_path, done=len(manifest["files"]), total=len(plan.files)))
        raise

    manifest_changed = _finish(dest_path, manifest, fmt=fmt, source=identity["source"], counts=(written, unchanged, removed))
    up_to_date = not (written or removed or manifest_changed)
    return ImportResult(dest_path, manifest, written=written, unchanged=unchanged, removed=removed, up_to_date=up_to_date)


def _interrupted_message(dest: Path, *, done: int, total: int) -> str:
    """What an import stopped while writing left in DEST, and how to go on."""
    if not (dest / MANIFEST).is_file() or writer.read_manifest(dest).get("complete", True):
        return f"import interrupted before anything in {dest} changed; rerun the same command to import"
    return (
        f"import interrupted: {dest} holds {done} of {total} files, and its {MANIFEST} says \"complete\": false, so "
        "training refuses it. Rerun the same command to finish (files already written are checked, not written "
        f"again), or delete {dest}"
    )


def _up_to_date(
    old: dict[str, Any] | None, dest: Path, *, identity: dict[str, str], options: dict[str, Any], fingerprint: dict[str, str]
) -> bool:
    """DEST already holds exactly this import: same format, source, options and source checksums, every file intact."""
    return (
        old is not None
        and bool(old.get("complete"))
        and old.get("version") == MANIFEST_VERSION
        and {k: old.get(k) for k in identity} == identity
        and old.get("options") == options
        and old.get("source_files") == fingerprint
        and writer.files_intact(dest, old.get("files", {}))
    )


def _finish(dest_path: Path, manifest: dict[str, Any], *, fmt: str, source: str, counts: tuple[int, int, int]) -> bool:
    """Write the manifest when it changed and log what the import did; returns whether it changed."""
    written, unchanged, removed = counts
    foreign = sorted(writer.files_under_splits(dest_path) - set(manifest["files"]))
    if foreign:
        log.warning(
            "%s holds %d file(s) this import did not write (the data layer reads them too), e.g. %s",
            dest_path, len(foreign), ", ".join(foreign[:3]),
        )
    text = writer.json_text(manifest)
    manifest_path = dest_path / MANIFEST
    manifest_changed = not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != text
    if manifest_changed:
        writer.write_atomic(manifest_path, text.encode())
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
    log.info("%s import of %s: %d images\n%s", fmt, source, manifest["total"], writer.format_import_table(manifest))
    return manifest_changed
