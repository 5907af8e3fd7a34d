"""The shared writer: an import's files written atomically and only when their bytes change, the
manifest (counts, dropped items, checksums) that makes a rerun verify instead of rewrite, and the
checks on DEST.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from research.data.classes import CANONICAL_CLASSES
from research.data.download import file_sha256
from research.data.importers.common import (
    MANIFEST,
    MANIFEST_VERSION,
    SPLITS,
    DatasetImportError,
    ImportPlan,
    PlannedFile,
    progress,
)

log = logging.getLogger(__name__)

# --- writing ---------------------------------------------------------------------------------
def unique_names(files: list[PlannedFile]) -> None:
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


def encode(f: PlannedFile) -> bytes:
    if f.pixels is not None:
        buffer = io.BytesIO()
        Image.fromarray(f.pixels).save(buffer, format="PNG")
        return buffer.getvalue()
    assert f.source is not None
    return f.source.read_bytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a killed import leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def json_text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2) + "\n"


def read_manifest(dest: Path) -> dict[str, Any] | None:
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


def files_intact(dest: Path, files: dict[str, str | None]) -> bool:
    for rel, sha in progress(files.items(), "verify", total=len(files)):
        path = dest / rel
        if sha is None or not path.is_file() or file_sha256(path) != sha:
            return False
    return True


def files_under_splits(dest: Path) -> set[str]:
    found: set[str] = set()
    for split in SPLITS:
        folder = dest / split
        if folder.is_dir():
            found.update(p.relative_to(dest).as_posix() for p in folder.rglob("*") if p.is_file())
    return found


def prune_empty_dirs(dest: Path) -> None:
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


def check_dest(dest: Path, identity: dict[str, str], force: bool) -> dict[str, Any] | None:
    """The manifest already in ``dest`` (None if none); refuses a DEST of another import unless ``force``."""
    if dest.exists() and not dest.is_dir():
        raise DatasetImportError(f"DEST {dest} is a file; choose a folder.")
    old = read_manifest(dest)
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


def build_manifest(identity: dict[str, str], options: dict[str, Any], fingerprint: dict[str, str], plan: ImportPlan) -> dict[str, Any]:
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


def write_files(dest: Path, plan: ImportPlan, manifest: dict[str, Any], previous: dict[str, str | None]) -> tuple[int, int, int]:
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
            write_atomic(dest / MANIFEST, json_text({**manifest, "complete": False, "files": pending}).encode())
            started = True

    written = unchanged = removed = 0
    for f in progress(plan.files, f"write {dest.name}"):
        data = encode(f)
        sha = hashlib.sha256(data).hexdigest()
        target = dest / f.relpath
        if target.is_file() and file_sha256(target) == sha:
            unchanged += 1
        else:
            begin()
            write_atomic(target, data)
            written += 1
        manifest["files"][f.relpath] = sha
    for rel in sorted(set(previous) - set(manifest["files"])):
        if (dest / rel).is_file():
            begin()
            (dest / rel).unlink()
            removed += 1
    if removed:
        prune_empty_dirs(dest)
    return written, unchanged, removed
