"""``poetry run sync-runs``: offline W&B records to the cloud, through W&B's public tools only.

For every offline record (``<run>/wandb/offline-run-*``) under the given folders, in turn:

1. ``wandb sync`` (W&B's own uploader, one call per record, each with a time limit) uploads the metrics,
   media, config and summary; W&B's file is never read or rewritten here, only its first bytes are
   checked, so a damaged or foreign file is named and skipped without stopping the others.
2. The run's upload list (:mod:`research.tracking.uploads`: tables, the interactive confusion matrix,
   the model artifact, ``predict``'s table) goes into the same W&B run through ``wandb.init(id=...,
   resume="must")``; each item is marked uploaded, so a second ``sync-runs`` uploads nothing twice.
3. A local sweep folder whose trials are on W&B becomes a W&B sweep (``wandb.sweep(..., prior_runs=...)``),
   recorded in ``wandb_sweep.json``.

Every record, upload list and sweep ends as one line: synced, uploaded, or skipped with its reason.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from research.errors import InputFileError, UserError
from research.tracking.runs import RunFolder, read_json, write_json
from research.tracking.uploads import PendingUploads, find_uploads
from research.tracking.wandb_log import (
    FAILED_ONLINE,
    LOGIN_HINT,
    SUPERSEDED,
    WANDB_HOST,
    has_credentials,
    log_artifact,
    start_failure,
    to_wandb,
)

log = logging.getLogger(__name__)

RECORD_IDENT = b":W&B"  # the first bytes of every W&B run file (run-<id>.wandb)
SWEEP_RECORD = "wandb_sweep.json"  # in a local sweep folder: the W&B sweep it became
DEFAULT_TIMEOUT = 120.0


class SyncLoginError(UserError, RuntimeError):
    """Uploading needs a W&B login."""


class SyncTimeoutError(UserError, RuntimeError):
    """The W&B server did not answer in time."""


@dataclass
class SyncReport:
    """One line per record, upload list and sweep; ``failed`` counts the skipped ones."""

    lines: list[str] = field(default_factory=list)
    failed: int = 0
    error: UserError | None = None  # what stopped the sync (the server did not answer)

    def add(self, what: Path | str, outcome: str, *, ok: bool = True) -> None:
        self.lines.append(f"{what}: {outcome}")
        self.failed += not ok


def server() -> str:
    return os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}")


def sync_offline_runs(paths: Sequence[Path], *, dry_run: bool = False, timeout: float = DEFAULT_TIMEOUT) -> SyncReport:
    """Sync every offline record, upload list and local sweep under ``paths`` (see the module docstring).

    Raises:
        InputFileError: nothing to sync under ``paths``.
        SyncLoginError: not logged in (checked before anything is sent; ``dry_run`` needs no login).
    """
    paths = [Path(p) for p in paths]
    records, uploads, sweeps = find_records(paths), find_uploads(paths), find_sweeps(paths)
    if not (records or uploads or sweeps):
        raise InputFileError(f"no offline W&B runs (offline-run-*) under {', '.join(map(str, paths))}")
    if not dry_run and not has_credentials():
        raise SyncLoginError(f"sync-runs uploads to W&B and needs a login: {LOGIN_HINT}. Nothing was uploaded.")
    report = SyncReport()
    for folder in records:
        if report.error is not None:
            report.add(folder, "not tried (the server did not answer)", ok=False)
            continue
        outcome, ok = sync_record(folder, dry_run=dry_run, timeout=timeout)
        report.add(folder, outcome, ok=ok)
        if outcome.startswith("no answer"):
            report.error = SyncTimeoutError(
                f"the W&B server {server()} did not answer within --timeout {timeout:g} s; the runs after it were not "
                "tried. Check the network (and WANDB_BASE_URL), or give more time with --timeout; running sync-runs "
                "again continues where it stopped."
            )
    for folder in uploads:
        outcome, ok = ("not tried (the server did not answer)", False) if report.error else upload_pending(
            PendingUploads.open(folder), dry_run=dry_run, timeout=timeout)
        report.add(folder, outcome, ok=ok)
    for folder in sweeps:
        outcome, ok = ("not tried (the server did not answer)", False) if report.error else register_sweep(folder, dry_run=dry_run)
        report.add(folder, outcome, ok=ok)
    return report


def find_records(paths: Sequence[Path]) -> list[Path]:
    """Offline records (``offline-run-*`` folders) equal to or below ``paths``, without the ones kept
    aside (``superseded/``: replayed by a resumed run; ``failed-online/``: a failed online start)."""
    found = {
        f.resolve()
        for p in paths
        for f in ([p] if p.name.startswith("offline-run-") else p.rglob("offline-run-*") if p.is_dir() else [])
        if f.is_dir() and not {SUPERSEDED, FAILED_ONLINE} & set(f.parts)
    }
    return sorted(found)


def find_sweeps(paths: Sequence[Path]) -> list[Path]:
    """Local sweep folders (``engine.json`` or ``trials.csv`` + ``sweep.yaml``) equal to or below ``paths``."""
    found: set[Path] = set()
    for path in (p for p in paths if p.is_dir()):
        for candidate in [path, *path.rglob("sweep.yaml")]:
            folder = candidate if candidate.is_dir() else candidate.parent
            if (folder / "sweep.yaml").is_file() and ((folder / "engine.json").is_file() or (folder / "trials.csv").is_file()):
                found.add(folder.resolve())
    return sorted(found)


def record_file(folder: Path) -> Path | None:
    return next(Path(folder).glob("run-*.wandb"), None)


def is_synced(folder: Path) -> bool:
    """W&B's own marker: ``run-<id>.wandb.synced`` beside the run file."""
    run_file = record_file(folder)
    return run_file is not None and run_file.with_name(run_file.name + ".synced").exists()


def sync_record(folder: Path, *, dry_run: bool, timeout: float) -> tuple[str, bool]:
    """``wandb sync`` of one offline record; (what happened, whether it went well)."""
    run_file = record_file(folder)
    if run_file is None:
        return "skipped: no run-*.wandb file in it (not an offline W&B record)", False
    if is_synced(folder):
        return "already synced", True
    with run_file.open("rb") as fh:
        head = fh.read(len(RECORD_IDENT))
    if head != RECORD_IDENT:
        return f"skipped: {run_file.name} is damaged (it does not start as a W&B run file); the run folder itself is unaffected", False
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli) if wandb_cli.exists() else "wandb", "sync", *(["--dry-run"] if dry_run else []), str(folder)]
    # W&B's CLI keeps its debug logs in ./wandb: run it beside the record, not in the user's working folder
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=folder.parent
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # wandb sync and the W&B service it started
        process.communicate()
        return f"no answer from {server()} within {timeout:g} s (wandb sync stopped)", False
    if process.returncode != 0:
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
        return f"skipped: wandb sync exited with {process.returncode}: {last[:300]}", False
    if dry_run:
        return "would sync (wandb sync --dry-run accepted it)", True
    run_file.with_name(run_file.name + ".synced").touch()  # W&B writes it too; `wandb sync` then skips the record
    return "synced", True


def upload_pending(uploads: PendingUploads, *, dry_run: bool, timeout: float) -> tuple[str, bool]:
    """The upload list of one W&B run into that run, after its offline record is synced."""
    pending = uploads.pending
    what = f"{len(pending)} item(s) for W&B run {uploads.run.project}/{uploads.run.id}"
    if not pending:
        return f"already uploaded ({len(uploads.items)} item(s))", True
    wandb_dir = uploads.folder.parents[1]
    records = [r for r in wandb_dir.glob(f"offline-run-*-{uploads.run.id}") if r.is_dir()]
    if dry_run:
        return f"would upload {what}: {', '.join(_item_names(pending))}", True
    if records and not any(is_synced(r) for r in records):
        return f"skipped: {what} wait until the run's offline record is synced", False
    import wandb

    try:
        run = wandb.init(id=uploads.run.id, project=uploads.run.project, entity=uploads.run.entity, resume="must",
                         dir=str(uploads.folder), settings=wandb.Settings(init_timeout=timeout, silent=True))
    except (wandb.errors.Error, OSError) as err:
        wandb.teardown()
        return f"skipped: {what}: W&B could not reopen the run ({start_failure(err, timeout)})", False
    for item in pending:
        value = uploads.decode(item)
        if item["kind"] == "artifact":
            log_artifact(run, value, wandb)
        elif item["kind"] == "summary":
            for key, number in value.items():
                run.summary[key] = number
        else:
            run.log({k: to_wandb(v, wandb) for k, v in value.items()})
    run.finish()
    wandb.teardown()  # returns once everything is uploaded
    for item in pending:
        uploads.mark_uploaded(item)
    return f"uploaded {what}", True


def _item_names(items: Sequence[dict[str, Any]]) -> list[str]:
    return [item["name"] if item["kind"] == "artifact" else ", ".join(item["data"]) for item in items]


def register_sweep(folder: Path, *, dry_run: bool) -> tuple[str, bool]:
    """A local sweep as a W&B sweep of its trials on W&B (``wandb.sweep(..., prior_runs=...)``), once."""
    config = yaml.safe_load((folder / "sweep.yaml").read_text())
    trials = sorted(p for p in (folder / "trials").glob("*") if p.is_dir()) if (folder / "trials").is_dir() else []
    synced = [run_id for run_id, records in map(_trial_records, trials) if records and any(map(is_synced, records))]
    if (folder / SWEEP_RECORD).exists():
        saved = read_json(folder / SWEEP_RECORD)
        later = sorted(set(synced) - set(saved["runs"]))
        note = (f"; {len(later)} trial(s) synced since are not in it (W&B adds runs to a sweep only when it is "
                f"created); they are in W&B group {folder.name}") if later else ""
        return f"already W&B sweep {saved['project']}/{saved['id']} of {len(saved['runs'])} trial(s){note}", True
    if dry_run:
        return f"would become a W&B sweep of its synced trials (now {len(synced)} of {len(trials)})", True
    if not synced:
        return "skipped: no trial of this sweep is synced to W&B yet", False
    project, entity = _trial_destination(trials, config)
    import wandb

    sweep_id = wandb.sweep(config, entity=entity, project=project, prior_runs=synced)
    write_json(folder / SWEEP_RECORD, {"id": sweep_id, "project": project, "entity": entity, "runs": synced})
    return f"W&B sweep {project}/{sweep_id} created with {len(synced)} trial(s)", True


def _trial_records(trial: Path) -> tuple[str, list[Path]]:
    """A trial's W&B run id and its offline records."""
    run_id = (RunFolder(trial).read_summary().get("wandb") or {}).get("id") or trial.name
    return run_id, [r for r in (trial / "wandb").glob(f"offline-run-*-{run_id}") if r.is_dir()]


def _trial_destination(trials: Sequence[Path], config: dict[str, Any]) -> tuple[str, str | None]:
    """The W&B project and entity the trials were recorded in (a trial's config.yaml), else the sweep YAML's."""
    for trial in trials:
        if (trial / "config.yaml").exists():
            saved = yaml.safe_load((trial / "config.yaml").read_text()) or {}
            wandb_cfg = saved.get("wandb") or {}
            return str(wandb_cfg.get("project") or config.get("project")), wandb_cfg.get("entity") or config.get("entity")
    return str(config.get("project")), config.get("entity")
