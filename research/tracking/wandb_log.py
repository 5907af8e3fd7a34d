"""Weights & Biases logging; with :mod:`research.tracking.wandb_offline` the only modules that import ``wandb``.

Modes: ``online``, ``offline`` (files under the run folder; upload later with ``poetry run sync-runs``),
``disabled``, or ``auto``: online when credentials exist, else offline. A failing online start falls
back to offline: a run never loses its record, or fails, because W&B is unreachable. The run folder
stays the source of truth either way.

Offline, metrics and media go into W&B's own record; tables, the interactive confusion matrix and
artifacts (which W&B would record by absolute paths of staged files) are kept as plain files by
:mod:`research.tracking.uploads` and uploaded by ``sync-runs`` into the same W&B run. Values are built
as the plain types of that module and turned into W&B objects by :func:`to_wandb`, live or at upload.
"""

from __future__ import annotations

import logging
import netrc
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from research.tracking.names import safe_name
from research.tracking.uploads import (
    ArtifactValue,
    ConfusionValue,
    ImageValue,
    PendingUploads,
    RunRef,
    TableValue,
    uploads_dir,
)

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"
LOGIN_HINT = "run `poetry run wandb login` or set WANDB_API_KEY"
FAILED_ONLINE = "failed-online"  # <run>/wandb/failed-online/: half-started online records of a failed start
SUPERSEDED = "superseded"  # <run>/wandb/superseded/: partial offline records a resumed run replays


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


def to_wandb(value: Any, wandb: Any) -> Any:
    """A plain value of :mod:`research.tracking.uploads` as the W&B object it stands for."""
    if isinstance(value, ImageValue):
        return wandb.Image(value.array if value.array is not None else str(value.path))
    if isinstance(value, TableValue):
        return wandb.Table(columns=list(value.columns), data=[[to_wandb(c, wandb) for c in row] for row in value.rows])
    if isinstance(value, ConfusionValue):
        return wandb.plot.confusion_matrix(y_true=value.y_true, preds=value.preds, class_names=value.class_names)
    return value


class WandbRun:
    """A W&B run bound to one run folder. All methods are no-ops when the mode is ``disabled``.

    Mode ``deferred`` (see :func:`deferred_run`) has no live W&B run: everything goes to the upload list
    of an existing run, which ``sync-runs`` uploads into it.
    """

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
        ``wandb/superseded/``, so ``sync-runs`` uploads one run holding every epoch once.
        ``enabled=False`` means disabled whatever ``mode`` and ``WANDB_MODE`` say (ranks other than 0)."""
        self.mode = resolve_mode(mode) if enabled else "disabled"
        self.run = None
        self._wandb = None
        self._uploads: PendingUploads | None = None
        self._kept_before = 0  # items the upload list held before this run added any (mode deferred)
        self.project, self.entity = project, entity
        self._root = Path(wandb_dir) if wandb_dir else Path(run_dir)
        if self.mode == "disabled":
            return  # before `import wandb`: it takes about a second and a disabled run never needs it
        import wandb

        self._wandb = wandb
        self._root.mkdir(parents=True, exist_ok=True)
        in_sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
        kwargs: dict[str, Any] = dict(
            project=project, entity=entity, group=group, tags=list(tags), job_type=job_type,
            name=run_id, config=dict(config), dir=str(self._root), reinit="finish_previous",
        )
        if not in_sweep:
            kwargs.update(id=_wandb_id(run_id), resume="allow" if resume else None)
        self.run = self._start(kwargs, resumed=resume and not in_sweep, init_timeout=init_timeout)
        self._check_destination()
        if in_sweep:
            self.run.config.update(dict(config), allow_val_change=True)
        self.run.define_metric("epoch")
        for prefix in ("train/*", "val/*", "lr", "lr/*", "epoch_seconds"):
            self.run.define_metric(prefix, step_metric="epoch")
        if self.mode == "offline":
            for row in history:
                self.log_epoch(row)

    def _start(self, kwargs: dict[str, Any], *, resumed: bool, init_timeout: float) -> Any:
        """``wandb.init`` in this run's mode; an online start that fails (no server, no or a bad key) records
        offline instead, and its half-started online record is moved to ``wandb/failed-online/``."""
        wandb = self._wandb
        if self.mode == "offline":
            log.info("W&B offline: the run is recorded under %s/wandb; upload it later with `poetry run sync-runs %s`", self._root, self._root)
            return self._init_offline(kwargs, resumed)
        wandb_dir = self._root / "wandb"
        before = set(wandb_dir.glob("run-*"))
        wandb_logger = logging.getLogger("wandb")
        level, started = wandb_logger.level, time.monotonic()
        if self.mode == "online":  # a failed start is reported below in one line, not as W&B's traceback
            wandb_logger.setLevel(logging.CRITICAL)
        try:
            return wandb.init(mode=self.mode, settings=wandb.Settings(init_timeout=init_timeout, silent=True), **kwargs)
        except (wandb.errors.Error, OSError) as err:  # no server, no or a bad key: the run goes on
            if self.mode != "online":
                raise
            seconds = time.monotonic() - started
            wandb.teardown()  # the failed start still holds the run id in W&B's service process
            parked = _park(wandb_dir, [p for p in wandb_dir.glob("run-*") if p not in before and p.is_dir()], FAILED_ONLINE)
            log.warning(
                "W&B online start failed after %.1f s: %s. Recording offline instead%s; upload later with "
                "`poetry run sync-runs %s`.", seconds, start_failure(err, init_timeout), parked, self._root,
            )
            self.mode = "offline"
            return self._init_offline(kwargs, resumed)
        finally:
            wandb_logger.setLevel(level)

    def _init_offline(self, kwargs: dict[str, Any], resumed: bool) -> Any:
        if resumed:
            supersede_offline_records(self._root / "wandb", kwargs["id"])
            kwargs["resume"] = None
        return self._wandb.init(mode="offline", settings=self._wandb.Settings(silent=True), **kwargs)

    def _check_destination(self) -> None:
        """Say where W&B files the run when it is not where the config asked (inside a sweep W&B takes the
        sweep's project and entity and ignores ``wandb.project``; its own warning is silenced with the rest)."""
        project, entity = getattr(self.run, "project", None), getattr(self.run, "entity", None)
        if project and project != self.project:
            log.warning("W&B files this run in project %r, not wandb.project=%r (a sweep's runs go to the sweep's "
                        "project: set `project:` in the sweep YAML); read it with `report --wandb %s/%s`",
                        project, self.project, entity or "ENTITY", project)
            self.project = project
        if self.entity and entity and entity != self.entity:
            log.warning("W&B files this run under entity %r, not wandb.entity=%r", entity, self.entity)
        self.entity = entity or self.entity

    @property
    def enabled(self) -> bool:
        return self.run is not None or self.mode == "deferred"

    @property
    def offline_dir(self) -> str | None:
        return str(Path(self.run.dir).parent) if self.run is not None and self.mode == "offline" else None

    @property
    def uploads(self) -> PendingUploads:
        """The upload list of this W&B run (made on first use)."""
        if self._uploads is None:
            ref = RunRef(id=self.run.id, project=self.project, entity=self.entity or None)
            self._uploads = PendingUploads(uploads_dir(self._root, self.run.id), ref)
        return self._uploads

    def record(self) -> dict[str, Any]:
        """Where the run is on W&B, for ``summary.json``: mode, offline record, project, entity, run id."""
        out: dict[str, Any] = {"mode": self.mode, "offline_dir": self.offline_dir, "project": self.project}
        if self.run is not None:
            out.update(id=self.run.id, entity=self.entity or None)
        return out

    def _log(self, data: Mapping[str, Any], *, portable: bool = True) -> None:
        """``run.log``; offline, values that W&B records by absolute paths (``portable=False``: tables,
        charts) go to the upload list instead, as everything does in mode ``deferred``."""
        if not data:
            return
        if self.mode == "deferred" or (self.mode == "offline" and not portable):
            self.uploads.log(data)
        elif self.run is not None:
            self.run.log({k: to_wandb(v, self._wandb) for k, v in data.items()})

    def log_epoch(self, row: Mapping[str, float]) -> None:
        """One history.csv row: ``train/*``, ``val/*``, ``lr``, ``lr/*``, ``epoch_seconds`` at step metric ``epoch``."""
        self._log({k: v for k, v in row.items() if v is not None})

    def log_images(self, images: Mapping[str, Path]) -> None:
        """Figures (curves, heatmaps...) under the given keys."""
        if self.enabled:
            self._log({k: ImageValue(path=Path(p)) for k, p in images.items() if Path(p).exists()})

    def log_confusion(self, targets: np.ndarray, preds: np.ndarray, class_names: Sequence[str], key: str = "val/confusion_matrix") -> None:
        """The interactive confusion matrix of W&B."""
        if self.enabled:
            value = ConfusionValue([int(t) for t in targets], [int(p) for p in preds], list(class_names))
            self._log({key: value}, portable=False)

    def log_classification_report(self, report: Mapping[str, Any], key: str = "val/classification_report") -> None:
        """sklearn's ``output_dict`` report as a table (class, precision, recall, f1, support)."""
        if not self.enabled:
            return
        rows = [
            [name, row.get("precision"), row.get("recall"), row.get("f1-score"), row.get("support")]
            if isinstance(row, Mapping) else [name, None, None, row, None]
            for name, row in report.items()
        ]
        self._log({key: TableValue(["class", "precision", "recall", "f1", "support"], rows)}, portable=False)

    def log_predictions(
        self, records: Sequence[Mapping[str, Any]], class_names: Sequence[str], key: str = "predictions/new_images",
        *, display_min: int = 0,
    ) -> None:
        """The new-image prediction table.

        Each record: ``image`` (name), ``mode``, ``original`` / ``crop`` / ``preprocessed``
        (HxW[x3] arrays or None), ``scores`` (class -> probability), ``winner``, ``true``,
        ``correct``, ``face_found``; optional ``gradcam_overlay`` (HxWx3 uint8), a last column ``gradcam``.
        The model input and the Grad-CAM are enlarged (whole pixels) to at least ``display_min`` a side,
        the size ``predict`` writes them to disk.
        """
        if not self.enabled:
            return
        columns = ["image", "mode", "original", "face_crop", "preprocessed", *class_names, "winner", "true", "correct", "face_found"]
        gradcam = any(r.get("gradcam_overlay") is not None for r in records)
        rows = []
        for r in records:
            crop, cam = r.get("crop"), r.get("gradcam_overlay")
            rows.append([
                r["image"], r.get("mode"), ImageValue(_as_uint8(r["original"])),
                ImageValue(_as_uint8(crop)) if crop is not None else None,
                ImageValue(enlarged(_as_uint8(r["preprocessed"]), display_min)),
                *[float(r["scores"][c]) for c in class_names],
                r["winner"], r.get("true"), r.get("correct"), r.get("face_found"),
                *([ImageValue(enlarged(cam, display_min)) if cam is not None else None] if gradcam else []),
            ])
        self._log({key: TableValue([*columns, "gradcam"] if gradcam else columns, rows)}, portable=False)

    def update_summary(self, values: Mapping[str, Any]) -> None:
        if self.mode == "deferred":
            self.uploads.summary(values)
        elif self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def log_model(self, checkpoint: Path, *, name: str, metadata: Mapping[str, Any]) -> None:
        """Upload a checkpoint as a ``model`` artifact (aliases ``best``, ``latest``); offline, ``sync-runs`` does."""
        if not self.enabled or not Path(checkpoint).exists():
            return
        artifact = ArtifactValue(safe_name(name), "model", [Path(checkpoint)], ["best", "latest"], dict(metadata))
        if self.mode in ("offline", "deferred"):
            self.uploads.artifact(artifact)
            return
        log_artifact(self.run, artifact, self._wandb)

    def finish(self, exit_code: int = 0) -> None:
        if self.mode == "deferred":
            if len(self.uploads.items) > self._kept_before:
                log.info("W&B: kept for run %s in %s; `poetry run sync-runs %s` uploads it into that run",
                         self.uploads.run.id, self.uploads.folder, self._root)
            return
        if self.run is None:
            return
        offline = self.offline_dir
        try:
            self.run.finish(exit_code=exit_code)
            # finish() returns before W&B's service has flushed the run file; teardown waits for it,
            # so the offline record is complete on disk when training returns.
            self._wandb.teardown()
        finally:
            self.run = None
        if offline:
            log.info("W&B offline run saved in %s; upload it with: poetry run sync-runs %s (also after moving the "
                     "run folder)", offline, self._root)


def log_artifact(run: Any, artifact: ArtifactValue, wandb: Any) -> None:
    """``run.log_artifact`` of a plain :class:`ArtifactValue`."""
    value = wandb.Artifact(name=artifact.name, type=artifact.type, metadata=dict(artifact.metadata))
    for path in artifact.files:
        value.add_file(str(path))
    run.log_artifact(value, aliases=list(artifact.aliases))


def deferred_run(root: Path, ref: RunRef) -> WandbRun:
    """A :class:`WandbRun` that adds to the upload list of the existing W&B run ``ref`` (recorded under
    ``root``): ``sync-runs`` uploads it into that run."""
    wandb_run = WandbRun(run_id=ref.id, run_dir=root, config={}, enabled=False)
    wandb_run.mode = "deferred"
    wandb_run._uploads = PendingUploads(uploads_dir(root, ref.id), ref)
    wandb_run._kept_before = len(wandb_run._uploads.items)
    return wandb_run


def start_failure(err: BaseException, init_timeout: float) -> str:
    """Why an online start failed, in words a user can act on."""
    text = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    if not has_credentials() or "API key" in text:
        return f"not logged in to W&B ({LOGIN_HINT})"
    if "Timed out" in text or isinstance(err, TimeoutError):
        server = os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}")
        return f"no answer from {server} within wandb.init_timeout={init_timeout:g} s ({text})"
    return text


def _park(wandb_dir: Path, folders: Sequence[Path], into: str) -> str:
    """Move ``folders`` into ``wandb_dir/into/`` (kept, never synced); a clause for the log, or ''."""
    if not folders:
        return ""
    target = wandb_dir / into
    target.mkdir(exist_ok=True)
    for folder in folders:
        folder.rename(target / folder.name)
    return f" (the half-started online record is in {target}, with W&B's debug logs; sync-runs skips it)"


def supersede_offline_records(wandb_dir: Path, wandb_id: str) -> None:
    """Move earlier offline records of this run id to ``superseded/`` (kept, but not synced by
    ``sync-runs``): the new record replays their epochs."""
    earlier = sorted(wandb_dir.glob(f"offline-run-*-{wandb_id}")) if wandb_dir.is_dir() else []
    if not earlier:
        return
    target = wandb_dir / SUPERSEDED
    target.mkdir(exist_ok=True)
    for folder in earlier:
        folder.rename(target / folder.name)
    log.info("resumed offline: %d earlier W&B record(s) of %s moved to %s; the new one replays their epochs", len(earlier), wandb_id, target)


def enlarged(image: np.ndarray, min_side: int) -> np.ndarray:
    """``image`` repeated by a whole factor (nearest pixels) to at least ``min_side`` a side."""
    factor = max(1, -(-min_side // max(1, min(image.shape[:2])))) if min_side else 1
    return image if factor == 1 else np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _as_uint8(image: Any) -> np.ndarray:
    """An image array as uint8 for ``wandb.Image``, which casts floats without scaling: [0, 1] floats
    (the de-normalised model input) are scaled to 0..255 first."""
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array, 0.0, 1.0) * 255.0 + 0.5
    return array.astype(np.uint8)


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
    return safe_name(run_id, max_length=64)


def training_run(
    *, run_id: str, run_dir: Path, recorded: Mapping[str, Any], wandb_cfg: Any, mode: str | None, init_timeout: float = 20.0,
) -> WandbRun | None:
    """The training run's own W&B run, for what is logged about it afterwards (``predict``'s table).

    ``recorded`` is ``summary.json``'s ``wandb`` entry (mode, project, entity, id). A run recorded online
    is reopened (``resume="must"``) when ``mode`` is online; otherwise, or when that fails (no server,
    another user's run), the values go to the run's upload list and ``sync-runs`` puts them into it.
    ``None``: the run has no W&B record (trained with ``wandb.mode=disabled``) to add to.
    """
    mode = resolve_mode(mode or wandb_cfg.mode)
    if mode == "disabled":
        return WandbRun(run_id=run_id, run_dir=run_dir, config={}, enabled=False)
    if recorded.get("mode") in (None, "disabled"):
        return None
    root = Path(wandb_cfg.dir) if wandb_cfg.dir else Path(run_dir)
    ref = RunRef(id=recorded.get("id") or _wandb_id(run_id), project=recorded.get("project") or wandb_cfg.project,
                 entity=recorded.get("entity") or wandb_cfg.entity)
    if mode == "online" and recorded.get("mode") == "online":
        import wandb

        try:
            run = wandb.init(id=ref.id, project=ref.project, entity=ref.entity, resume="must", dir=str(root),
                             settings=wandb.Settings(init_timeout=init_timeout, silent=True))
        except (wandb.errors.Error, OSError) as err:
            wandb.teardown()
            log.warning("W&B run %s/%s could not be reopened (%s); what is logged for it is kept for sync-runs",
                        ref.project, ref.id, start_failure(err, init_timeout))
        else:
            reopened = WandbRun(run_id=run_id, run_dir=root, config={}, enabled=False)
            reopened.mode, reopened.run, reopened._wandb = "online", run, wandb
            reopened.project, reopened.entity = ref.project, ref.entity
            log.info("W&B: logging into training run %s/%s", ref.project, ref.id)
            return reopened
    return deferred_run(root, ref)


def fetch_project_runs(path: str) -> list[dict[str, Any]]:
    """Finished runs of ``ENTITY/PROJECT`` through the public API (online only; the server filters by
    state): name, config, summary, history and, for a sweep's run, its sweep (id, name, config)."""
    import wandb

    api = wandb.Api(timeout=30)
    out = []
    for run in api.runs(path, filters={"state": "finished"}):
        if run.state != "finished":  # the server filtered; a fake or an older server may not have
            continue
        sweep = getattr(run, "sweep", None)
        out.append(
            {
                "id": run.id,
                "name": run.name,
                "config": dict(run.config),
                "summary": {k: v for k, v in run.summary.items() if not k.startswith("_")},
                "history": [dict(r) for r in run.scan_history()],
                "url": run.url,
                "created_at": getattr(run, "created_at", None),
                "sweep": None if sweep is None else {
                    "id": sweep.id, "name": getattr(sweep, "name", None) or sweep.id, "config": dict(sweep.config or {}),
                    "url": getattr(sweep, "url", None),
                },
            }
        )
    return out
