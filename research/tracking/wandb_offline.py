"""Offline W&B records that travel: re-pointing a moved run folder's staged files, uploading with
``wandb sync`` (``poetry run sync-runs``), and setting aside the partial records of a resumed run.

An offline run records into ``<run>/wandb/offline-run-*``; the files W&B stages for it (the model
artifact, table data) go to ``<run>/wandb/staging-data/`` (:data:`STAGING`), so the run folder carries
everything its upload needs. With :mod:`research.tracking.wandb_log` these are the only modules that
import ``wandb``.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from research.errors import InputFileError

log = logging.getLogger(__name__)

STAGING = "staging-data"  # WANDB_DATA_DIR of offline runs, inside <run>/wandb/


_BLOCK, _HEADER = 32 * 1024, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_record_log(path: Path) -> tuple[bytes, list[bytes]]:
    """The 7-byte file header and the records of a ``run-*.wandb`` file (W&B's LevelDB-style log:
    32 KiB blocks, each record fragment with a crc32 / length / type header)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pos, pending = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if length == 0 and kind == 0:  # zero padding up to the block end
            pos += left
            continue
        fragment = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        pending = fragment if kind in (_FULL, _FIRST) else pending + fragment
        if kind in (_FULL, _LAST):
            records.append(pending)
            pending = b""
    return data[:_HEADER], records


def write_record_log(path: Path, header: bytes, records: Sequence[bytes]) -> None:
    """Write records in the same log format (fragmented across 32 KiB blocks, crc32 of type + data)."""
    out = bytearray(header)
    for data in records:
        first = True
        while True:
            left = _BLOCK - len(out) % _BLOCK
            if left < _HEADER:
                out += b"\0" * left
                continue
            fragment, data = data[: left - _HEADER], data[left - _HEADER :]
            last = not data
            kind = (_FULL if last else _FIRST) if first else (_LAST if last else _MIDDLE)
            crc = zlib.crc32(fragment, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
            out += struct.pack("<IHB", crc, len(fragment), kind) + fragment
            first = False
            if last:
                break
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(out))
    os.replace(tmp, path)


def relocate_offline_run(folder: Path) -> int:
    """Point the staged artifact files of an offline run at where its run folder is now.

    W&B records staged files by absolute path; after ``runs/`` is copied or moved (another machine,
    another HOME) those paths are stale. Returns how many paths were rewritten (0: nothing to do).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder).resolve()
    staging = folder.parent / STAGING
    run_file = next(folder.glob("run-*.wandb"), None)
    if run_file is None:
        raise InputFileError(f"{folder} holds no run-*.wandb file: is it an offline-run-* folder?")
    header, raw = read_record_log(run_file)
    changed, out = 0, []
    for data in raw:
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "artifact":
            for entry in record.artifact.manifest.contents:
                marker = f"/{STAGING}/"
                if entry.local_path and marker in entry.local_path:
                    new = str(staging / entry.local_path.split(marker, 1)[1])
                    if new != entry.local_path:
                        entry.local_path, changed = new, changed + 1
            data = record.SerializeToString()
        out.append(data)
    if changed:
        write_record_log(run_file, header, out)
    return changed


def sync_offline_runs(paths: Sequence[Path], extra_args: Sequence[str] = ()) -> int:
    """``poetry run sync-runs``: re-point staged files of every offline run under ``paths``, then
    ``wandb sync`` them. Returns wandb's exit code."""
    import subprocess
    import sys

    folders = sorted(
        {f for p in map(Path, paths) for f in ([p] if p.name.startswith("offline-run-") else p.rglob("offline-run-*"))
         if f.is_dir() and "superseded" not in f.parts}
    )
    if not folders:
        raise InputFileError(f"no offline W&B runs (offline-run-*) under {', '.join(map(str, paths))}")
    for folder in folders:
        if relocate_offline_run(folder):
            log.info("%s: staged files re-pointed to %s", folder, folder.parent / STAGING)
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli) if wandb_cli.exists() else "wandb", "sync", *extra_args, *map(str, folders)]
    log.info("running %s", " ".join(command[:3]) + f" ... ({len(folders)} run(s))")
    return subprocess.run(command, check=False).returncode


def supersede_offline_records(wandb_dir: Path, wandb_id: str) -> None:
    """Move earlier offline records of this run id to ``superseded/`` (kept, but not synced by
    ``wandb sync <run>/wandb/offline-run-*``): the new record replays their epochs."""
    earlier = sorted(wandb_dir.glob(f"offline-run-*-{wandb_id}")) if wandb_dir.is_dir() else []
    if not earlier:
        return
    target = wandb_dir / "superseded"
    target.mkdir(exist_ok=True)
    for folder in earlier:
        folder.rename(target / folder.name)
    log.info("resumed offline: %d earlier W&B record(s) of %s moved to %s; the new one replays their epochs", len(earlier), wandb_id, target)


