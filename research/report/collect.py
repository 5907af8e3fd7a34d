"""Collecting runs for the report: run folders (the source of truth) or the W&B API.

Both sources are read through the typed run summary (:class:`RunSummary`); a
:class:`RunRecord` is that summary plus what the report adds (history, confusion matrix,
per-class metrics, new-image predictions, evaluations, display label). Sweep folders
(``runs/sweeps/<sweep-id>/`` with ``trials.csv``, ``best.json``, ``sweep.yaml``) become a
:class:`SweepRecord`; their trial runs belong to the sweep, not to the single runs.
"""

from __future__ import annotations

import csv
import logging
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from research.config import flatten_mapping
from research.errors import UserError
from research.faces.settings import SINGLE_MODES
from research.inference.comparison import compare_modes
from research.tracking import wandb_log
from research.tracking.names import safe_name
from research.tracking.runs import RunFolder, RunFolderError, read_json
from research.tracking.summary import RunSummary, config_value

log = logging.getLogger(__name__)

TRAIN_HINT = "train one with `poetry run train --config scratch_cnn data.root=demo`"
MODES = SINGLE_MODES  # raw, haar, aligned: whichever a run's predictions/ holds
# How deep below a --runs folder run folders are looked for (runs/sweeps/<id>/trials/<run>).
MAX_DEPTH = 4
# Files research.sweep writes in a sweep folder; any one of them marks the folder as a sweep.
SWEEP_FILES = ("trials.csv", "best.json", "sweep.yaml")
# Columns of trials.csv that are not swept parameters.
TRIAL_COLUMNS = ("trial", "run_id", "state", "metric", "epochs", "run_dir", "error")


class NoRunsError(RunFolderError):
    """No finished run to report on."""


class WandbReportError(UserError, RuntimeError):
    """The W&B project could not be read."""


@dataclass
class RunRecord(RunSummary):
    """A run's summary plus what the report adds; ``path`` is ``None`` for runs read from W&B."""

    history: list[dict[str, float]] = field(default_factory=list)
    path: Path | None = None
    url: str | None = None
    confusion: dict[str, Any] | None = None  # {"class_names": [...], "counts": [[...]]}
    per_class: dict[str, dict[str, float]] | None = None
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # mode -> records
    comparison: dict[str, Any] | None = None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> metrics.json
    label: str = ""  # display name: the model, or the run id when models repeat
    config: dict[str, Any] | None = None  # config.yaml flattened to dotted keys ("optim.lr": 0.001)
    val_predictions: dict[str, np.ndarray] | None = None  # "targets", "preds": (N,) per validation image
    key: str = ""  # unique folder name under <report>/figures/

    @classmethod
    def of(cls, summary: RunSummary, **extra: Any) -> RunRecord:
        return cls(**{f: getattr(summary, f) for f in summary.__dataclass_fields__}, **extra)

    def score(self, metric: str) -> float | None:
        """The selected checkpoint's validation ``metric`` (``acc``, ``macro_f1``, ...)."""
        return self.best.get(f"val/{metric}")

    @property
    def synthetic(self) -> bool:
        return self.dataset.synthetic


@dataclass
class SweepRecord:
    """A sweep folder: its ``best.json`` and ``trials.csv`` plus the trial run folders found in ``trials/``."""

    sweep_id: str
    path: Path | None  # None for a sweep read from W&B
    metric: str = "?"
    goal: str = "maximize"
    best: dict[str, Any] | None = None  # the best trial's row (best.json, else picked from trials.csv)
    params: list[str] = field(default_factory=list)  # swept parameters, in trials.csv's column order
    trials: list[dict[str, str]] = field(default_factory=list)  # rows of trials.csv
    runs: list[RunRecord] = field(default_factory=list)  # trial run folders, finished or not
    url: str | None = None  # the W&B sweep page (sweeps read from W&B)
    name: str | None = None  # the sweep's `name:` (W&B)

    def trial_metric(self, trial: dict[str, Any]) -> float | None:
        value = trial.get("metric")
        return None if value in (None, "") else float(value)

    def ranked_trials(self) -> list[dict[str, str]]:
        """Trials with a metric first, best first for the sweep's goal; then the others by trial number."""
        sign = -1.0 if self.goal == "maximize" else 1.0

        def order(trial: dict[str, str]) -> tuple[int, float, int]:
            value = self.trial_metric(trial)
            number = int(trial["trial"]) if str(trial.get("trial", "")).isdigit() else 0
            return (1, 0.0, number) if value is None else (0, sign * value, number)

        return sorted(self.trials, key=order)


@dataclass
class RunSet:
    runs: list[RunRecord]  # finished single runs (no sweep trials)
    skipped: list[RunRecord]
    source: str  # where the runs came from, for the header
    sweeps: list[SweepRecord] = field(default_factory=list)


# --- collecting ---------------------------------------------------------------------------
def find_run_folders(roots: Iterable[str | Path]) -> list[Path]:
    """Run folders (with summary.json or config.yaml) equal to or below each root, sorted per root."""
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            root = root.parent
        if not root.is_dir():
            log.warning("%s does not exist; no runs read from it", root)
            continue
        for folder in _walk(root, 0):
            found.setdefault(folder.resolve(), None)
    return list(found)


def _walk(folder: Path, depth: int) -> list[Path]:
    if (folder / "summary.json").exists() or (folder / "config.yaml").exists():
        return [folder]
    if depth >= MAX_DEPTH:
        return []
    out: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name != "wandb":
            out.extend(_walk(child, depth + 1))
    return out


def is_sweep_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in SWEEP_FILES)


def find_sweep_folders(roots: Iterable[str | Path]) -> list[Path]:
    """Sweep folders equal to or below each root (a --runs path may be ``runs/`` or one sweep folder)."""
    found: dict[Path, None] = {}

    def walk(folder: Path, depth: int) -> None:
        if is_sweep_folder(folder):
            found.setdefault(folder.resolve(), None)
            return
        if depth >= MAX_DEPTH or (folder / "summary.json").exists() or (folder / "config.yaml").exists():
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.name != "wandb":
                walk(child, depth + 1)

    for root in roots:
        root = Path(root)
        if root.is_dir():
            walk(root, 0)
    return list(found)


def sweep_of(run_folder: Path) -> Path | None:
    """The sweep folder a run folder belongs to (``<sweep>/trials/<run>``), or ``None`` for a single run."""
    trials = run_folder.parent
    if trials.name == "trials" and is_sweep_folder(trials.parent):
        return trials.parent.resolve()
    return None


def load_sweep(folder: Path, runs: Sequence[RunRecord] = ()) -> SweepRecord:
    """A sweep folder as research.sweep writes it; missing files leave their fields empty."""
    sweep = SweepRecord(sweep_id=folder.name, path=folder, runs=sorted(runs, key=lambda r: r.run_id))
    config = _read_optional_yaml(folder / "sweep.yaml")
    metric = (config.get("metric") or {}) if isinstance(config, dict) else {}
    best = _read_optional_json(folder / "best.json") or {}
    sweep.metric = str(best.get("metric") or metric.get("name") or "?")
    sweep.goal = str(best.get("goal") or metric.get("goal") or "maximize")
    if (folder / "trials.csv").is_file():
        with (folder / "trials.csv").open(newline="") as fh:
            reader = csv.DictReader(fh)
            sweep.trials = list(reader)
            sweep.params = [c for c in reader.fieldnames or [] if c not in TRIAL_COLUMNS]
    sweep.best = best.get("best")
    if sweep.best is None:
        scored = [t for t in sweep.ranked_trials() if sweep.trial_metric(t) is not None]
        sweep.best = scored[0] if scored else None
    return sweep


def _read_optional_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, ValueError) as err:  # ValueError: not UTF-8 text (a binary file)
        log.warning("%s is not valid YAML (%s); left out of the report", path, _first_line(err))
        return None


def _read_optional_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        log.warning("%s is not valid JSON (%s); left out of the report", path, _first_line(err))
        return None


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:160]


# Fields of summary.json that must be JSON objects for the report to read the run.
SUMMARY_OBJECTS = ("dataset", "best", "final", "env", "wandb")


def _summary_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """summary.json's content, or why the report cannot read it (empty, truncated, not JSON, not a summary)."""
    if not path.exists():
        return None, "no summary.json"
    try:
        data = read_json(path)
    except ValueError as err:
        return None, f"damaged summary.json: not valid JSON ({_first_line(err)})"
    if not isinstance(data, dict) or not data:
        return None, f"damaged summary.json: a JSON {type(data).__name__}, not a run summary"
    wrong = [k for k in SUMMARY_OBJECTS if data.get(k) is not None and not isinstance(data[k], dict)]
    if wrong:
        return None, f"damaged summary.json: {', '.join(wrong)} not a JSON object"
    return data, None


def _config_or_problem(path: Path) -> Any:
    """config.yaml's content (None when missing: older runs), or why the report cannot read it."""
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, ValueError) as err:  # ValueError: not UTF-8 text (a binary file)
        return f"damaged config.yaml: not valid YAML ({_first_line(err)})"
    return config if config is None or isinstance(config, dict) else "damaged config.yaml: not a mapping of settings"


def load_run_record(folder: Path) -> RunRecord:
    """Everything the report uses from one run folder; optional files may be missing. A run whose
    summary.json is missing or damaged gets that as its status (the report skips it and says why)."""
    run = RunFolder(folder)
    data, problem = _summary_problem(run.summary_path)
    if data is None:
        return RunRecord(run_id=run.run_id, status=str(problem), path=run.path)
    record = RunRecord.of(RunSummary.from_dict(data, run_id=run.run_id), path=run.path)
    if record.status == "finished" and not record.best:
        record.status = "finished without best metrics"
    if not record.finished:
        return record
    config = _config_or_problem(run.config_path)
    if isinstance(config, str):
        record.status = config
        return record
    record.history = run.read_history()
    record.config = flat_config(config)
    record.val_predictions = read_val_predictions(run.val_predictions)
    record.confusion = _read_optional_json(run.path / "confusion_counts.json")
    record.per_class = _read_optional_json(run.path / "per_class.json")
    for mode in MODES:
        records = _read_optional_json(run.predictions / mode / "predictions.json")
        if records is not None:
            record.predictions[mode] = records
    if record.predictions:
        record.comparison = _read_optional_json(run.predictions / "comparison.json")
        if record.comparison is None:
            record.comparison = compare_modes(record.predictions)
    for metrics_path in sorted(run.evaluations.glob("*/metrics.json")):
        metrics = _read_optional_json(metrics_path)
        if metrics is not None:
            record.evaluations[metrics_path.parent.name] = metrics
    return record


def flat_config(config: Any) -> dict[str, Any] | None:
    """A config (nested as in config.yaml, or dotted as W&B keeps it) as ``{"optim.lr": 0.001, ...}``."""
    if not isinstance(config, dict) or not config:
        return None
    return flatten_mapping(config)


def read_val_predictions(path: Path) -> dict[str, np.ndarray] | None:
    """``targets`` and ``preds`` (N,) of val_predictions.npz; ``None`` when missing or unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # an object array would unpickle: refused
            targets, preds = np.asarray(data["targets"], dtype=np.int64), np.asarray(data["preds"], dtype=np.int64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("%s cannot be read (%s); no paired test or confidence interval for this run", path, err)
        return None
    if targets.shape != preds.shape or targets.ndim != 1:
        log.warning("%s holds targets %s and preds %s; left out of the report", path, targets.shape, preds.shape)
        return None
    return {"targets": targets, "preds": preds}


def collect_runs(run_paths: Sequence[str | Path]) -> RunSet:
    """Finished single runs (best validation macro-F1 first), the skipped ones and the sweeps.

    A run folder inside a sweep's ``trials/`` folder is a trial of that sweep: it goes to the
    sweep (:class:`SweepRecord`), finished or not, never to the single runs.

    Raises:
        NoRunsError: no finished single run and no sweep with trials below ``run_paths``.
    """
    sweep_folders = dict.fromkeys(find_sweep_folders(run_paths))
    records: list[RunRecord] = []
    trials: dict[Path, list[RunRecord]] = {}
    for folder in find_run_folders(run_paths):
        record = load_run_record(folder)
        sweep = sweep_of(folder)
        if sweep is None:
            records.append(record)
        else:
            sweep_folders.setdefault(sweep, None)
            trials.setdefault(sweep, []).append(record)
    sweeps = [load_sweep(f, trials.get(f, [])) for f in sorted(sweep_folders, key=lambda p: (p.name, str(p)))]
    runs = [r for r in records if r.finished]
    skipped = [r for r in records if not r.finished]
    for record in skipped:
        log.warning("skipping run %s (%s): %s", record.run_id, record.path, record.status)
    where = ", ".join(str(p) for p in run_paths) or "(no path given)"
    if not runs and not any(s.trials or s.runs for s in sweeps):
        extra = f" (skipped: {skipped_text(skipped)})" if skipped else ""
        raise NoRunsError(f"no finished runs under {where}{extra}; {TRAIN_HINT}")
    return RunSet(finish_records(runs), skipped, f"local run folders: {where}", sweeps)


def finish_records(runs: list[RunRecord]) -> list[RunRecord]:
    """Sort by best validation macro-F1 (desc, then run id) and assign labels and figure keys."""
    runs = sorted(runs, key=lambda r: (-(r.score("macro_f1") if r.score("macro_f1") is not None else float("-inf")), r.run_id))
    model_counts = Counter(r.model for r in runs)
    keys: Counter[str] = Counter()
    for record in runs:
        record.label = record.model if model_counts[record.model] == 1 else record.run_id
        safe = safe_name(record.run_id)
        keys[safe] += 1
        record.key = safe if keys[safe] == 1 else f"{safe}-{keys[safe]}"
    return runs


def dataset_groups(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """``runs`` split by dataset (name and synthetic flag), real datasets first, then by name;
    each group keeps the order of ``runs``."""
    groups: dict[tuple[bool, str], list[RunRecord]] = {}
    for record in runs:
        groups.setdefault((record.synthetic, record.dataset.name), []).append(record)
    return [groups[key] for key in sorted(groups)]


def wandb_record(raw: dict[str, Any]) -> RunRecord:
    """A :class:`RunRecord` from one entry of :func:`wandb_log.fetch_project_runs`."""
    summary = RunSummary.from_wandb(
        name=str(raw.get("name", "?")), config=raw.get("config") or {}, summary=raw.get("summary") or {}
    )
    history = sorted((dict(row) for row in raw.get("history") or [] if "epoch" in row), key=lambda row: row["epoch"])
    if summary.epochs_run is None and history:
        summary.epochs_run = max(int(row["epoch"]) for row in history)
    return RunRecord.of(summary, history=history, url=raw.get("url"), config=flat_config(raw.get("config")))


def collect_wandb_runs(path: str) -> RunSet:
    """Finished training runs of W&B project ``ENTITY/PROJECT`` (online only).

    The server is asked for finished runs only. A run that belongs to a W&B sweep (``wandb agent``, or a
    local sweep uploaded by ``sync-runs``) is a trial of that sweep, reported with it as local sweeps are;
    the other runs are compared per dataset like run folders.

    Raises:
        WandbReportError: the project could not be read (no network, not logged in, wrong path).
        NoRunsError: the project has no finished training run.
    """
    hint = (
        "`--wandb` reads runs through the W&B API: it needs network access and `wandb login` "
        "(or WANDB_API_KEY). Offline, build the report from the local run folders instead: "
        "`poetry run report --runs runs/`"
    )
    if path.count("/") != 1 or not all(path.split("/")):
        raise WandbReportError(f"--wandb expects ENTITY/PROJECT, got {path!r}. {hint}")
    try:
        raw_runs = wandb_log.fetch_project_runs(path)
    except Exception as err:  # network, auth and API errors all mean the same thing here
        raise WandbReportError(f"could not read W&B project {path}: {err}. {hint}") from err
    singles = [wandb_record(raw) for raw in raw_runs if not raw.get("sweep")]
    sweeps = wandb_sweeps([raw for raw in raw_runs if raw.get("sweep")])
    runs = [r for r in singles if r.finished]
    skipped = [r for r in singles if not r.finished]
    if not runs and not sweeps:
        raise NoRunsError(f"no finished training runs in W&B project {path}; {TRAIN_HINT}")
    return RunSet(finish_records(runs), skipped, f"W&B project {path}", sweeps)


def wandb_sweeps(raw_runs: Sequence[dict[str, Any]]) -> list[SweepRecord]:
    """The W&B sweeps of ``raw_runs`` (entries of :func:`wandb_log.fetch_project_runs` that name a sweep),
    each with its trials in the order they were created, as a local sweep folder's ``trials.csv`` has them."""
    by_sweep: dict[str, list[dict[str, Any]]] = {}
    for raw in raw_runs:
        by_sweep.setdefault(raw["sweep"]["id"], []).append(raw)
    sweeps = []
    for sweep_id, members in sorted(by_sweep.items()):
        info = members[0]["sweep"]
        config = info.get("config") or {}
        metric = config.get("metric") or {}
        sweep = SweepRecord(sweep_id=sweep_id, path=None, metric=str(metric.get("name") or "?"),
                            goal=str(metric.get("goal") or "maximize"), params=list(config.get("parameters") or {}),
                            url=info.get("url"), name=info.get("name"))
        members = sorted(members, key=lambda raw: (str(raw.get("created_at") or ""), str(raw.get("name"))))
        for number, raw in enumerate(members, start=1):
            record = wandb_record(raw)
            sweep.runs.append(record)
            summary = raw.get("summary") or {}
            params = {k: config_value(raw.get("config") or {}, k) for k in sweep.params}
            sweep.trials.append({
                "trial": str(number), "run_id": record.run_id, "state": "finished", "metric": summary.get(sweep.metric),
                "epochs": record.epochs_run, **{k: v for k, v in params.items() if v is not None},
            })
        scored = [t for t in sweep.ranked_trials() if sweep.trial_metric(t) is not None]
        sweep.best = scored[0] if scored else None
        sweeps.append(sweep)
    return sweeps


def skipped_text(skipped: Sequence[RunRecord]) -> str:
    """``run-id (why)``, with the folder when it is not named after the run (a copied folder, say)."""
    return ", ".join(
        f"`{r.run_id}` ({r.status}{f'; folder {r.path}' if r.path is not None and r.path.name != r.run_id else ''})"
        for r in skipped
    )
