"""The record of one training run, written to its folder and to W&B together.

``train()`` assembles the components and hands the record to a :class:`RunRecorder`: the resolved
config and the validation split when the run starts, each epoch's history row (``history.csv`` and
the W&B step), the checkpoints, the final evaluation's report and figures, the summary, and how the
run ended (finished, interrupted or failed). Under torchrun only rank 0 records; the recorder of any
other rank writes nothing. The run folder stays the source of truth: whatever W&B does, the folder
holds every file.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from research.errors import UserError, cannot_write
from research.tracking.claim import LOCK_NAME, FolderClaim
from research.tracking.runs import RunExistsError, RunFolder, write_json
from research.tracking.summary import FINISHED, RunSummary
from research.tracking.wandb_log import WandbRun

log = logging.getLogger(__name__)


class RunRecorder:
    """Writes one run's record (``run``) and its W&B run (``wandb_run``) side by side.

    Args:
        run: the run folder.
        summary: the run's summary, filled in as the run goes and written by :meth:`finish` / :meth:`end`.
        wandb_run: its W&B run (disabled on ranks other than 0).
        checkpoint_meta: what every checkpoint carries besides the weights (config, class names, mean/std,
            weight source), so ``best.pt`` serves inference on its own.
        enabled: False on ranks other than 0 (nothing is written).
    """

    def __init__(
        self, run: RunFolder, summary: RunSummary, wandb_run: WandbRun, *, checkpoint_meta: Mapping[str, Any],
        enabled: bool = True,
    ) -> None:
        self.run, self.summary, self.wandb = run, summary, wandb_run
        self.checkpoint_meta = dict(checkpoint_meta)
        self.enabled = enabled

    def start(self, config_yaml: str, val_split: Mapping[str, Any] | None, val_files: Sequence[str]) -> None:
        """Write ``config.yaml`` (and ``val_split.json`` for a carved validation split) into the claimed
        folder (:func:`claim_run_folder`)."""
        if not self.enabled:
            return
        self.run.write_text("config.yaml", config_yaml)
        if val_split is not None:  # the same validation images on resume, in evaluate and in the report
            write_json(self.run.val_split_path, {**val_split, "files": list(val_files)})

    def epoch(self, history: Sequence[Mapping[str, float]]) -> None:
        """``history.csv`` with every epoch so far, and the newest epoch's row on W&B."""
        if self.enabled:
            self.run.write_history(history)
            self.wandb.log_epoch(history[-1])

    def save_checkpoint(self, name: str, state: Mapping[str, Any]) -> None:
        """``last.pt`` (everything resume needs) or ``best.pt`` (the weights and what inference needs)."""
        if not self.enabled:
            return
        if name == "best":  # inference needs the weights and the metadata, not the optimiser
            state = {"model": state["model"], "epoch": state["trainer"]["epoch"]}
        self.run.save_checkpoint(self.run.path / f"{name}.pt", {**state, **self.checkpoint_meta})

    def evaluation(
        self, *, targets: np.ndarray, preds: np.ndarray, class_names: Sequence[str], report: Mapping[str, Any],
        figures: Mapping[str, Path],
    ) -> None:
        """The final evaluation on W&B: the interactive confusion matrix, the figures and the
        classification report as a table (the files are already in the folder)."""
        self.wandb.log_confusion(targets, preds, class_names)
        self.wandb.log_images(figures)
        self.wandb.log_classification_report(report)

    def finish(self, *, log_model: bool, model_metadata: Mapping[str, Any], after: Any = None) -> None:
        """Write the finished run's summary, run ``after(run, wandb_run)`` (e.g. new-image predictions),
        put the summary (and ``best.pt`` as a model artifact) on W&B and close the W&B run."""
        self.summary.status = FINISHED
        self.run.write_summary(self.summary.to_dict())
        try:
            if after is not None:
                after(self.run, self.wandb)
            self.wandb.update_summary(self.summary.to_wandb())
            if log_model:
                self.wandb.log_model(self.run.best_path, name=f"model-{self.run.run_id}", metadata=dict(model_metadata))
        finally:
            self.wandb.finish()

    def end(self, status: str, *, epochs: int, exit_code: int, error: str | None = None) -> None:
        """Mark the run ``interrupted`` or ``failed`` wherever anything can still be written; never mask the cause."""
        if not self.enabled:
            return
        self.summary.status, self.summary.epochs_run, self.summary.error = status, epochs, error
        try:
            self.run.write_summary(self.summary.to_dict())
        except OSError as err:
            log.error("could not record the run as %s in %s: %s", status, self.run.summary_path, err)
        try:
            self.wandb.finish(exit_code=exit_code)
        except Exception as err:  # the W&B record must not hide why the run ended
            log.error("W&B could not close the run: %s", err)


def claim_run_folder(run: RunFolder, *, fresh: bool) -> FolderClaim:
    """Claim the run folder (:mod:`research.tracking.claim`; made if needed) for this process, before W&B
    or anything else writes there: only now, after every input was read, so a failed start leaves nothing
    behind. A ``fresh`` (not resumed) run refuses a folder that holds a finished epoch and clears what an
    earlier failed start left; the claim makes that check and the clearing safe against another training
    started into the same folder at the same time."""
    try:
        claim = FolderClaim.acquire(run.path)
    except OSError as err:
        if isinstance(err, UserError) or not err.errno:
            raise
        raise cannot_write(run.path, err) from None
    try:
        if fresh:
            refuse_finished(run)
            clear_leftovers(run)
    except BaseException:
        claim.release()
        raise
    return claim


def refuse_finished(run: RunFolder) -> None:
    """A new run never writes over a folder that holds a completed epoch (``last.pt`` or ``best.pt``)."""
    if run.last_path.exists() or run.best_path.exists():
        raise RunExistsError(
            f"run folder {run.path} exists; choose another run.name or resume it with run.resume={run.path}"
        )


def clear_leftovers(run: RunFolder) -> None:
    """Remove what a start that failed before its first epoch left in the folder (the claim stays)."""
    leftovers = [p for p in run.path.iterdir() if p.name != LOCK_NAME]
    if leftovers:
        log.info("run folder %s holds no completed epoch (an earlier start failed); starting it afresh", run.path)
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
