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
    ) -> None:
        """``history``: epochs a resumed run already completed. Offline, a resumed run is recorded
        afresh with those epochs replayed first and the earlier partial records moved to
        ``wandb/superseded/``, so ``wandb sync`` uploads one run holding every epoch once."""
        self.mode = resolve_mode(mode)
        self.run = None
        self._wandb = None
        if self.mode == "disabled":
            return  # before `import wandb`: it takes about a second and a disabled run never needs it
        import wandb

        self._wandb = wandb
        directory = Path(wandb_dir) if wandb_dir else Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        in_sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
        kwargs: dict[str, Any] = dict(
            project=project, entity=entity, group=group, tags=list(tags), job_type=job_type,
            name=run_id, config=dict(config), dir=str(directory), reinit="finish_previous",
        )
        if not in_sweep:
            kwargs.update(id=_wandb_id(run_id), resume="allow" if resume else None)
        if self.mode == "offline":
            log.info("W&B offline: the run is recorded under %s/wandb; upload it later with `wandb sync`", directory)
            self._start_offline_afresh(directory, kwargs, resume and not in_sweep)
        try:
            self.run = wandb.init(mode=self.mode, settings=wandb.Settings(init_timeout=init_timeout, silent=True), **kwargs)
        except Exception as err:  # CommError, timeouts, auth errors: the run must go on
            if self.mode != "online":
                raise
            log.warning(
                "W&B online start failed after at most %.0f s (%s); recording offline instead (wandb.init_timeout "
                "sets the wait). Sync later with `wandb sync`.", init_timeout, str(err).splitlines()[0][:200],
            )
            # The failed start still holds the run id in W&B's service process: restart it.
            wandb.teardown()
            self.mode = "offline"
            self._start_offline_afresh(directory, kwargs, resume and not in_sweep)
            self.run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
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
        ``correct``, ``face_found``.
        """
        if not self.enabled:
            return
        wandb = self._wandb
        columns = ["image", "mode", "original", "face_crop", "preprocessed", *class_names, "winner", "true", "correct", "face_found"]
        table = wandb.Table(columns=columns)
        for r in records:
            crop = r.get("crop")
            table.add_data(
                r["image"], r.get("mode"),
                wandb.Image(r["original"]),
                wandb.Image(crop) if crop is not None else None,
                wandb.Image(r["preprocessed"]),
                *[float(r["scores"][c]) for c in class_names],
                r["winner"], r.get("true"), r.get("correct"), r.get("face_found"),
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
        self.run.finish(exit_code=exit_code)
        # finish() returns before W&B's service has flushed the run file; teardown waits for it,
        # so the offline record is complete on disk when training returns.
        self._wandb.teardown()
        if offline:
            log.info("W&B offline run saved in %s; upload with: wandb sync %s", offline, offline)
        self.run = None


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
