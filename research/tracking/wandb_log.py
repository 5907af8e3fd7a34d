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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from research.tracking.names import safe_name
from research.tracking.wandb_offline import STAGING, supersede_offline_records

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
        self.run = self._start(kwargs, directory, staging, resumed=resume and not in_sweep, init_timeout=init_timeout)
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

    def _start(self, kwargs: dict[str, Any], directory: Path, staging: _StagingDir, *, resumed: bool, init_timeout: float) -> Any:
        """``wandb.init`` in this run's mode; an online start that fails (no server, a bad key) records offline instead."""
        wandb = self._wandb
        if self.mode == "offline":
            log.info("W&B offline: the run is recorded under %s/wandb; upload it later with `poetry run sync-runs %s`", directory, directory)
            self._start_offline_afresh(directory, kwargs, resumed)
            self._staging = staging.enter()
        wandb_logger = logging.getLogger("wandb")
        level = wandb_logger.level
        if self.mode == "online":  # a failed start is reported below in one line, not as W&B's traceback
            wandb_logger.setLevel(logging.CRITICAL)
        try:
            return wandb.init(mode=self.mode, settings=wandb.Settings(init_timeout=init_timeout, silent=True), **kwargs)
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
            self._start_offline_afresh(directory, kwargs, resumed)
            self._staging = staging.enter()
            return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        finally:
            wandb_logger.setLevel(level)

    @staticmethod
    def _start_offline_afresh(directory: Path, kwargs: dict[str, Any], resumed: bool) -> None:
        if resumed:
            supersede_offline_records(directory / "wandb", kwargs["id"])
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
        artifact = self._wandb.Artifact(name=safe_name(name), type="model", metadata=dict(metadata))
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
