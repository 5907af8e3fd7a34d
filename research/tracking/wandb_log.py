"""Weights & Biases logging; the only module of the package that imports ``wandb``.

Modes: ``online``, ``offline`` (files under the run folder; upload later with
``wandb sync``), ``disabled``, or ``auto``: online when credentials exist, else offline.
A failing online start falls back to offline: a run never loses its record, or fails,
because W&B is unreachable. The run folder stays the source of truth either way.
"""

from __future__ import annotations

import logging
import netrc
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"


def has_credentials() -> bool:
    """True when an API key is in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", WANDB_HOST).split("//")[-1]) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` with credentials, else ``offline``; ``WANDB_MODE`` wins when set.

    An empty ``WANDB_MODE`` counts as unset (W&B itself would reject it with a traceback).
    """
    if os.environ.get("WANDB_MODE", None) == "":
        del os.environ["WANDB_MODE"]
    env = os.environ.get("WANDB_MODE")
    if env in {"online", "offline", "disabled", "dryrun"}:
        return "offline" if env == "dryrun" else env
    if mode != "auto":
        return mode
    return "online" if has_credentials() else "offline"


class WandbRun:
    """A W&B run bound to one run folder. All methods are no-ops when the mode is ``disabled``."""

    def __init__(
        self,
        *,
        run_id: str,
        run_dir: Path,
        config: Mapping[str, Any],
        mode: str = "auto",
        project: str = "fer-research",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        job_type: str = "train",
        wandb_dir: str | None = None,
        resume: bool = False,
        init_timeout: float = 20.0,
        history: Sequence[Mapping[str, float]] = (),
        enabled: bool = True,
    ) -> None:
        """``history``: epochs a resumed run already completed. Offline, a resumed run is recorded
        afresh with those epochs replayed first and the earlier partial records moved to
        ``wandb/superseded/``, so ``wandb sync`` uploads one run holding every epoch once.
        ``enabled=False`` means disabled whatever ``mode`` and ``WANDB_MODE`` say (ranks other than 0)."""
        self.mode = resolve_mode(mode) if enabled else "disabled"
        self.run = None
        self._wandb = None
        self._staging = _StagingDir(None)
        if self.mode == "disabled":
            return  # before `import wandb`: it takes about a second and a disabled run never needs it
        import wandb

        self._wandb = wandb
        directory = Path(wandb_dir) if wandb_dir else Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        # Offline, artifact files (the model, table data) are staged inside the run folder, not in the
        # user's home: the folder then carries everything its later sync needs.
        staging = _StagingDir(directory / "wandb" / STAGING)
        in_sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
        kwargs: dict[str, Any] = dict(
            project=project, entity=entity, group=group, tags=list(tags), job_type=job_type,
            name=run_id, config=dict(config), dir=str(directory), reinit="finish_previous",
        )
        if not in_sweep:
            kwargs.update(id=_wandb_id(run_id), resume="allow" if resume else None)
        if self.mode == "offline":
            log.info("W&B offline: the run is recorded under %s/wandb; upload it later with `poetry run sync-runs %s`", directory, directory)
            self._start_offline_afresh(directory, kwargs, resume and not in_sweep)
            self._staging = staging.enter()
        wandb_logger = logging.getLogger("wandb")
        level = wandb_logger.level
        if self.mode == "online":  # a failed start is reported below in one line, not as W&B's traceback
            wandb_logger.setLevel(logging.CRITICAL)
        try:
            self.run = wandb.init(mode=self.mode, settings=wandb.Settings(init_timeout=init_timeout, silent=True), **kwargs)
        except Exception as err:  # CommError, timeouts, auth errors: the run must go on
            if self.mode != "online":
                raise
            log.warning(
                "W&B online start failed after at most %.0f s (%s); recording offline instead (wandb.init_timeout "
                "sets the wait). Upload later with `poetry run sync-runs RUN_FOLDER`.", init_timeout, str(err).splitlines()[0][:200],
            )
            # The failed start still holds the run id in W&B's service process: restart it.
            wandb.teardown()
            self.mode = "offline"
            self._start_offline_afresh(directory, kwargs, resume and not in_sweep)
            self._staging = staging.enter()
            self.run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        finally:
            wandb_logger.setLevel(level)
        if in_sweep:
            self.run.config.update(dict(config), allow_val_change=True)
        self.run.define_metric("epoch")
        for split in ("train", "val"):
            self.run.define_metric(f"{split}/*", step_metric="epoch")
        self.run.define_metric("lr", step_metric="epoch")
        self.run.define_metric("epoch_seconds", step_metric="epoch")
        if self.mode == "offline":
            for row in history:
                self.log_epoch(row)

    @staticmethod
    def _start_offline_afresh(directory: Path, kwargs: dict[str, Any], resumed: bool) -> None:
        if resumed:
            _supersede_offline_records(directory / "wandb", kwargs["id"])
            kwargs["resume"] = None

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def offline_dir(self) -> str | None:
        return str(Path(self.run.dir).parent) if self.enabled and self.mode == "offline" else None

    def log_epoch(self, row: Mapping[str, float]) -> None:
        """One history.csv row: ``train/*``, ``val/*``, ``lr``, ``epoch_seconds`` at step metric ``epoch``."""
        if self.enabled:
            self.run.log({k: v for k, v in row.items() if v is not None})

    def log_images(self, images: Mapping[str, Path]) -> None:
        """Figures (curves, heatmaps...) as ``wandb.Image`` under the given keys."""
        if self.enabled:
            self.run.log({k: self._wandb.Image(str(p)) for k, p in images.items() if Path(p).exists()})

    def log_confusion(self, targets: np.ndarray, preds: np.ndarray, class_names: Sequence[str], key: str = "val/confusion_matrix") -> None:
        """The interactive confusion matrix of W&B."""
        if self.enabled:
            plot = self._wandb.plot.confusion_matrix(
                y_true=[int(t) for t in targets], preds=[int(p) for p in preds], class_names=list(class_names)
            )
            self.run.log({key: plot})

    def log_classification_report(self, report: Mapping[str, Any], key: str = "val/classification_report") -> None:
        """sklearn's ``output_dict`` report as a table (class, precision, recall, f1, support)."""
        if not self.enabled:
            return
        table = self._wandb.Table(columns=["class", "precision", "recall", "f1", "support"])
        for name, row in report.items():
            if isinstance(row, Mapping):
                table.add_data(name, row.get("precision"), row.get("recall"), row.get("f1-score"), row.get("support"))
            else:
                table.add_data(name, None, None, row, None)
        self.run.log({key: table})

    def log_predictions(self, records: Sequence[Mapping[str, Any]], class_names: Sequence[str], key: str = "predictions/new_images") -> None:
        """The new-image prediction table.

        Each record: ``image`` (name), ``mode``, ``original`` / ``crop`` / ``preprocessed``
        (HxW[x3] arrays or None), ``scores`` (class -> probability), ``winner``, ``true``,
        ``correct``, ``face_found``; optional ``gradcam_overlay`` (HxWx3 uint8), a last column ``gradcam``.
        """
        if not self.enabled:
            return
        wandb = self._wandb
        columns = ["image", "mode", "original", "face_crop", "preprocessed", *class_names, "winner", "true", "correct", "face_found"]
        gradcam = any(r.get("gradcam_overlay") is not None for r in records)
        table = wandb.Table(columns=[*columns, "gradcam"] if gradcam else columns)
        for r in records:
            crop = r.get("crop")
            cam = r.get("gradcam_overlay")
            table.add_data(
                r["image"], r.get("mode"),
                wandb.Image(_as_uint8(r["original"])),
                wandb.Image(_as_uint8(crop)) if crop is not None else None,
                wandb.Image(_as_uint8(r["preprocessed"])),
                *[float(r["scores"][c]) for c in class_names],
                r["winner"], r.get("true"), r.get("correct"), r.get("face_found"),
                *([wandb.Image(cam) if cam is not None else None] if gradcam else []),
            )
        self.run.log({key: table})

    def update_summary(self, values: Mapping[str, Any]) -> None:
        if self.enabled:
            for key, value in values.items():
                self.run.summary[key] = value

    def log_model(self, checkpoint: Path, *, name: str, metadata: Mapping[str, Any]) -> None:
        """Upload a checkpoint as a ``model`` artifact (aliases ``best``, ``latest``)."""
        if not self.enabled or not Path(checkpoint).exists():
            return
        artifact = self._wandb.Artifact(name=_artifact_name(name), type="model", metadata=dict(metadata))
        artifact.add_file(str(checkpoint))
        self.run.log_artifact(artifact, aliases=["best", "latest"])

    def finish(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        offline = self.offline_dir
        try:
            self.run.finish(exit_code=exit_code)
            # finish() returns before W&B's service has flushed the run file; teardown waits for it,
            # so the offline record is complete on disk when training returns.
            self._wandb.teardown()
        finally:
            self._staging.restore()
            self.run = None
        if offline:
            log.info(
                "W&B offline run saved in %s; upload with: poetry run sync-runs %s (works after moving the run "
                "folder; plain `wandb sync` works while it stays where it is)", offline, offline,
            )


STAGING = "staging-data"  # WANDB_DATA_DIR of offline runs, inside <run>/wandb/


class _StagingDir:
    """Points ``WANDB_DATA_DIR`` (where W&B stages artifact files) at a folder for the life of a run."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._saved, self._active = path, None, False

    def enter(self) -> _StagingDir:
        self._saved = os.environ.get("WANDB_DATA_DIR")
        os.environ["WANDB_DATA_DIR"] = str(Path(self.path).resolve())
        self._active = True
        return self

    def restore(self) -> None:
        if not self._active:
            return
        if self._saved is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = self._saved
        self._active = False


def _as_uint8(image: Any) -> np.ndarray:
    """An image array as uint8 for ``wandb.Image``, which casts floats without scaling: [0, 1] floats
    (the de-normalised model input) are scaled to 0..255 first."""
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array, 0.0, 1.0) * 255.0 + 0.5
    return array.astype(np.uint8)


# --- offline records that travel: W&B's record log, and re-pointing staged files after a move ---------
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
        raise FileNotFoundError(f"{folder} holds no run-*.wandb file: is it an offline-run-* folder?")
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
        raise FileNotFoundError(f"no offline W&B runs (offline-run-*) under {', '.join(map(str, paths))}")
    for folder in folders:
        if relocate_offline_run(folder):
            log.info("%s: staged files re-pointed to %s", folder, folder.parent / STAGING)
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli) if wandb_cli.exists() else "wandb", "sync", *extra_args, *map(str, folders)]
    log.info("running %s", " ".join(command[:3]) + f" ... ({len(folders)} run(s))")
    return subprocess.run(command, check=False).returncode


def _supersede_offline_records(wandb_dir: Path, wandb_id: str) -> None:
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


def linked_run(
    *,
    source_run_id: str,
    run_dir: Path,
    config: Mapping[str, Any],
    wandb_cfg: Any,
    job_type: str,
    name: str,
    mode: str | None,
) -> WandbRun:
    """A W&B run for work done with a trained run (predict, evaluate), grouped with it.

    ``wandb_cfg`` is the run's ``wandb`` settings (mode, project, entity, group, tags, dir);
    ``mode`` overrides its mode.
    """
    return WandbRun(
        run_id=f"{source_run_id}-{name}", run_dir=run_dir, config={**config, "source_run": source_run_id},
        mode=mode or wandb_cfg.mode, project=wandb_cfg.project, entity=wandb_cfg.entity,
        group=wandb_cfg.group or source_run_id, tags=[*wandb_cfg.tags, job_type], job_type=job_type,
        wandb_dir=wandb_cfg.dir, resume=True,
    )


def _wandb_id(run_id: str) -> str:
    """W&B ids may not contain / \\ # ? % : and are at most 64 characters."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id)[-64:]


def _artifact_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def fetch_project_runs(path: str) -> list[dict[str, Any]]:
    """Runs of ``ENTITY/PROJECT`` through the public API (online only): name, config, summary, history."""
    import wandb

    api = wandb.Api(timeout=30)
    out = []
    for run in api.runs(path):
        if run.state != "finished":
            continue
        out.append(
            {
                "name": run.name,
                "config": dict(run.config),
                "summary": {k: v for k, v in run.summary.items() if not k.startswith("_")},
                "history": [dict(r) for r in run.scan_history()],
                "url": run.url,
            }
        )
    return out
