"""Markdown comparison report of trained runs, read from run folders (or the W&B API).

``report_cli([Path("runs")], Path("reports/results.md"))`` writes the markdown file and
copies the figures it shows under ``<out parent>/figures/<run_id>/``; every link is
relative, so the report renders on GitHub. Conclusions are computed from the numbers in
the run folders and each one quotes the numbers it rests on. The same inputs give the
same report, except for the line with the generation time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from research import plots
from research.tracking import wandb_log
from research.tracking.runs import RunFolder, RunFolderError, read_json

log = logging.getLogger(__name__)

DEFAULT_TITLE = "Facial-expression recognition: model comparison"
SYNTHETIC_LABEL = "SYNTHETIC demo data: these numbers say nothing about real faces"
TRAIN_HINT = "train one with `poetry run train --config scratch_cnn data.root=demo`"
METRICS = ("acc", "top2", "macro_f1", "weighted_f1", "loss", "ece")
CHART_METRICS = ("acc", "top2", "macro_f1", "weighted_f1")
MODES = ("raw", "haar")
# figure file in the run folder -> caption in the per-model section
RUN_FIGURES = {
    "curves_loss.png": "loss",
    "curves_acc.png": "accuracy",
    "curves_macro_f1.png": "macro-F1",
    "confusion_counts.png": "confusion matrix (counts)",
    "confusion_normalized.png": "confusion matrix (row-normalised)",
    "reliability.png": "reliability diagram",
}
# How deep below a --runs folder run folders are looked for (runs/sweeps/<id>/trials/<run>).
MAX_DEPTH = 4


class NoRunsError(RunFolderError):
    """No finished run to report on."""


class WandbReportError(RuntimeError):
    """The W&B project could not be read."""


@dataclass
class RunRecord:
    """What the report knows about one run; ``path`` is ``None`` for runs read from W&B."""

    run_id: str
    model: str
    status: str
    dataset: str
    synthetic: bool
    pretrained: str
    mode: str
    best: dict[str, float | None]  # metric (acc, top2, macro_f1, ...) -> value at the best epoch
    best_epoch: int | None = None
    epochs_run: int | None = None
    monitor: str = "val/macro_f1"
    params_total: int | None = None
    params_trainable: int | None = None
    train_seconds: float | None = None
    train_images_per_s: float | None = None
    latency_ms: float | None = None
    image_size: int | None = None
    train_images: int | None = None
    val_images: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    url: str | None = None
    confusion: dict[str, Any] | None = None  # {"class_names": [...], "counts": [[...]]}
    per_class: dict[str, dict[str, float]] | None = None
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # mode -> records
    comparison: dict[str, Any] | None = None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> metrics.json
    label: str = ""  # display name: the model, or the run id when models repeat
    key: str = ""  # unique folder name under <report>/figures/

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class RunSet:
    runs: list[RunRecord]
    skipped: list[RunRecord]
    source: str  # where the runs came from, for the header


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


def _read_optional_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except json.JSONDecodeError as err:
        log.warning("%s is not valid JSON (%s); left out of the report", path, err)
        return None


def load_run_record(folder: Path) -> RunRecord:
    """Everything the report uses from one run folder; optional files may be missing."""
    run = RunFolder(folder)
    summary = run.read_summary()
    if not summary:
        return RunRecord(
            run.run_id, "?", "no summary.json", "?", False, "?", "?", {}, path=run.path
        )
    status = summary.get("status", "finished" if "best" in summary else "incomplete")
    if status == "finished" and not summary.get("best"):
        status = "finished without best metrics"
    dataset = summary.get("dataset") or {}
    record = RunRecord(
        run_id=summary.get("run_id", run.run_id),
        model=str(summary.get("model", "?")),
        status=status,
        dataset=str(dataset.get("name") or dataset.get("root") or "?"),
        synthetic=bool(dataset.get("synthetic", False)),
        pretrained=str(summary.get("pretrained", "?")),
        mode=str(summary.get("mode", "?")),
        best={m: (summary.get("best") or {}).get(f"val/{m}") for m in METRICS},
        best_epoch=summary.get("best_epoch"),
        epochs_run=summary.get("epochs_run"),
        monitor=str(summary.get("monitor", "val/macro_f1")),
        params_total=summary.get("params_total"),
        params_trainable=summary.get("params_trainable"),
        train_seconds=summary.get("train_seconds"),
        train_images_per_s=summary.get("train_images_per_s"),
        latency_ms=summary.get("latency_ms_per_image"),
        image_size=summary.get("image_size"),
        train_images=dataset.get("train_images"),
        val_images=dataset.get("val_images"),
        summary=summary,
        path=run.path,
    )
    if not record.finished:
        return record
    record.history = run.read_history()
    record.confusion = _read_optional_json(run.path / "confusion_counts.json")
    record.per_class = _read_optional_json(run.path / "per_class.json")
    for mode in MODES:
        records = _read_optional_json(run.predictions / mode / "predictions.json")
        if records is not None:
            record.predictions[mode] = records
    if record.predictions:
        record.comparison = _read_optional_json(run.predictions / "comparison.json")
        if record.comparison is None:
            from research.predict import compare_modes

            record.comparison = compare_modes(record.predictions)
    for metrics_path in sorted(run.evaluations.glob("*/metrics.json")):
        metrics = _read_optional_json(metrics_path)
        if metrics is not None:
            record.evaluations[metrics_path.parent.name] = metrics
    return record


def collect_runs(run_paths: Sequence[str | Path]) -> RunSet:
    """Finished runs (best validation macro-F1 first) and the skipped ones, from run folders.

    Raises:
        NoRunsError: no finished run below ``run_paths``.
    """
    records = [load_run_record(folder) for folder in find_run_folders(run_paths)]
    runs = [r for r in records if r.finished]
    skipped = [r for r in records if not r.finished]
    for record in skipped:
        log.warning("skipping run %s: status %s", record.run_id, record.status)
    where = ", ".join(str(p) for p in run_paths) or "(no path given)"
    if not runs:
        extra = f" (skipped: {_skipped_text(skipped)})" if skipped else ""
        raise NoRunsError(f"no finished runs under {where}{extra}; {TRAIN_HINT}")
    return RunSet(_finish_records(runs), skipped, f"local run folders: {where}")


def _finish_records(runs: list[RunRecord]) -> list[RunRecord]:
    """Sort by best validation macro-F1 (desc, then run id) and assign labels and figure keys."""
    runs = sorted(runs, key=lambda r: (-_num(r.best.get("macro_f1"), float("-inf")), r.run_id))
    model_counts = Counter(r.model for r in runs)
    keys: Counter[str] = Counter()
    for record in runs:
        record.label = record.model if model_counts[record.model] == 1 else record.run_id
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in record.run_id)
        keys[safe] += 1
        record.key = safe if keys[safe] == 1 else f"{safe}-{keys[safe]}"
    return runs


def _cfg_get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """A config value by dotted key, whether W&B stored the keys flat or nested."""
    if dotted in config:
        value = config[dotted]
    else:
        value = config
        for part in dotted.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return default
            value = value[part]
    # The W&B API may wrap values as {"value": ...}.
    if isinstance(value, Mapping) and set(value) == {"value"}:
        value = value["value"]
    return default if value is None else value


def _wandb_pretrained(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    if summary.get("pretrained"):
        return str(summary["pretrained"])
    if _cfg_get(config, "model.pretrained_file"):
        return f"file:{_cfg_get(config, 'model.pretrained_file')}"
    if _cfg_get(config, "model.pretrained", False):
        return "hub (model.pretrained=true; source not recorded in W&B)"
    return "none"


def wandb_record(raw: Mapping[str, Any]) -> RunRecord:
    """A :class:`RunRecord` from one entry of :func:`wandb_log.fetch_project_runs`."""
    config, summary = raw.get("config") or {}, raw.get("summary") or {}
    root = str(_cfg_get(config, "data.root", "?"))
    synthetic = root == "demo"
    history = sorted(
        (dict(row) for row in raw.get("history") or [] if "epoch" in row),
        key=lambda row: row["epoch"],
    )
    best = {m: summary.get(f"best/val/{m}") for m in METRICS}
    epochs = [int(row["epoch"]) for row in history]
    return RunRecord(
        run_id=str(raw.get("name", "?")),
        model=str(_cfg_get(config, "model.name", "?")),
        status="finished"
        if best["macro_f1"] is not None
        else "no best/val metrics (not a training run?)",
        dataset="synthetic demo data" if synthetic else root,
        synthetic=synthetic,
        pretrained=_wandb_pretrained(config, summary),
        mode=str(_cfg_get(config, "model.mode", "?")),
        best=best,
        best_epoch=summary.get("best_epoch"),
        epochs_run=summary.get("epochs_run", max(epochs) if epochs else None),
        monitor=str(_cfg_get(config, "train.monitor", "val/macro_f1")),
        params_total=summary.get("params_total"),
        params_trainable=summary.get("params_trainable"),
        train_seconds=summary.get("train_seconds"),
        train_images_per_s=summary.get("train_images_per_s"),
        latency_ms=summary.get("latency_ms_per_image"),
        image_size=_cfg_get(config, "data.image_size"),
        history=history,
        summary={"seed": _cfg_get(config, "run.seed"), "config": dict(config)},
        url=raw.get("url"),
    )


def collect_wandb_runs(path: str) -> RunSet:
    """Finished training runs of W&B project ``ENTITY/PROJECT`` (online only).

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
    records = [wandb_record(raw) for raw in raw_runs]
    runs = [r for r in records if r.finished]
    skipped = [r for r in records if not r.finished]
    if not runs:
        raise NoRunsError(f"no finished training runs in W&B project {path}; {TRAIN_HINT}")
    return RunSet(_finish_records(runs), skipped, f"W&B project {path}")


# --- formatting helpers -------------------------------------------------------------------
def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _points(a: float, b: float) -> str:
    """Difference of two fractions in percentage points."""
    return f"{abs(a - b) * 100:.1f} points"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _link(target: Path, base: Path) -> str:
    """A relative, URL-quoted link from the folder ``base`` to ``target``."""
    return quote(Path(os.path.relpath(target, base)).as_posix())


def _synthetic_note(runs: Sequence[RunRecord]) -> list[str]:
    synthetic = [r for r in runs if r.synthetic]
    if not synthetic:
        return []
    names = ", ".join(f"`{r.run_id}`" for r in synthetic)
    return [f"> **{SYNTHETIC_LABEL}.** Runs on synthetic data: {names}.", ""]


def _skipped_text(skipped: Sequence[RunRecord]) -> str:
    return ", ".join(f"`{r.run_id}` ({r.status})" for r in skipped)


def _params(record: RunRecord) -> str:
    if record.params_total is None:
        return "n/a"
    trainable = "n/a" if record.params_trainable is None else f"{record.params_trainable / 1e6:.2f}"
    return f"{record.params_total / 1e6:.2f} / {trainable}"


# --- conclusions --------------------------------------------------------------------------
def conclusions(runs: Sequence[RunRecord]) -> list[str]:
    """Markdown bullets computed from the numbers; each quotes the numbers it rests on."""
    lines: list[str] = []
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        lines.append(
            f"- Caution: the runs used {len(datasets)} different datasets ({', '.join(datasets)}); "
            "validation scores are only comparable between runs on the same data."
        )
    lines += _best_model(runs)
    lines += _cost_of_speed(runs)
    lines += _calibration(runs)
    for record in runs:
        facts = [
            fact
            for fact in (
                _confused_pair(record),
                _weakest_class(record),
                _crop_effect(record),
                _overfitting(record),
                _best_epoch_note(record),
            )
            if fact
        ]
        if facts:
            lines.append(f"- **{record.label}** (`{record.run_id}`):")
            lines += [f"  - {fact}" for fact in facts]
    return lines


def _scored(runs: Sequence[RunRecord], metric: str) -> list[RunRecord]:
    return [r for r in runs if r.best.get(metric) is not None]


def _best_model(runs: Sequence[RunRecord]) -> list[str]:
    scored = _scored(runs, "macro_f1")
    if not scored:
        return ["- No run has a validation macro-F1; nothing to rank."]
    best = scored[0]
    f1 = float(best.best["macro_f1"])
    text = f"- Best model by validation macro-F1: **{best.label}** with {f1:.3f}"
    if best.best.get("acc") is not None:
        text += f" (accuracy {best.best['acc']:.3f})"
    if len(scored) == 1:
        text += "; it is the only run, so there is nothing to compare it with."
    else:
        second = scored[1]
        f1_second = float(second.best["macro_f1"])
        if f1 == f1_second:
            text += f", tied with {second.label} ({f1_second:.3f})."
        else:
            text += (
                f", {_points(f1, f1_second)} above the runner-up {second.label} ({f1_second:.3f})."
            )
    if best.val_images:
        text += f" One validation image is {100 / best.val_images:.2f} accuracy points ({best.val_images} images)."
    return [text]


def _cost_of_speed(runs: Sequence[RunRecord]) -> list[str]:
    scored = _scored(runs, "macro_f1")
    if len(scored) < 2:
        return []
    best = scored[0]
    lines = []
    for attr, what, unit, fewer in (
        ("latency_ms", "Fastest at inference", "ms/image (CPU, batch 1)", "faster than"),
        ("params_total", "Smallest", "M parameters", "fewer than"),
    ):
        have = [r for r in scored if getattr(r, attr) is not None]
        if len(have) < 2 or getattr(best, attr) is None:
            continue
        pick = min(have, key=lambda r: (getattr(r, attr), r.run_id))
        scale = 1e6 if attr == "params_total" else 1.0
        value, best_value = getattr(pick, attr) / scale, getattr(best, attr) / scale
        if pick is best:
            lines.append(
                f"- {what}: the best model {best.label} is also the one ({value:.2f} {unit})."
            )
            continue
        f1_pick, f1_best = float(pick.best["macro_f1"]), float(best.best["macro_f1"])
        cost = (
            f"it gives up {_points(f1_best, f1_pick)} of macro-F1"
            if f1_pick <= f1_best
            else f"it gains {_points(f1_pick, f1_best)} of macro-F1"
        )
        ratio = f"{best_value / value:.1f}x" if value > 0 else "n/a"
        lines.append(
            f"- {what}: **{pick.label}** at {value:.2f} {unit}, {ratio} {fewer} the best model "
            f"{best.label} ({best_value:.2f}); {cost} ({f1_pick:.3f} vs {f1_best:.3f})."
        )
    return lines


def _calibration(runs: Sequence[RunRecord]) -> list[str]:
    lines = []
    have = sorted(_scored(runs, "ece"), key=lambda r: (float(r.best["ece"]), r.run_id))
    if have:
        best = have[0]
        text = f"- Best calibrated (lowest validation ECE): **{best.label}**, ECE {best.best['ece']:.3f}"
        if len(have) > 1:
            worst = have[-1]
            text += f" (worst: {worst.label}, {worst.best['ece']:.3f})"
        lines.append(text + ".")
    confident = []
    for record in runs:
        stats = ((record.comparison or {}).get("modes") or {}).get("raw")
        if stats and stats.get("mean_confidence") is not None:
            confident.append((float(stats["mean_confidence"]), record, stats))
    if confident:
        confidence, record, stats = max(confident, key=lambda t: (t[0], t[1].run_id))
        text = (
            f"- Most confident on the new images: **{record.label}**, mean top-class probability "
            f"{confidence:.3f} over {stats['images']} image(s) (raw, no crop)"
        )
        if stats.get("accuracy") is not None:
            acc = float(stats["accuracy"])
            relation = "above" if confidence > acc else "below"
            text += (
                f"; its accuracy there is {acc:.3f} on {stats['labelled']} labelled image(s), so "
                f"confidence is {_points(confidence, acc)} {relation} accuracy"
            )
        lines.append(text + ".")
    return lines


def _confused_pair(record: RunRecord) -> str | None:
    if not record.confusion:
        return None
    names, counts = record.confusion["class_names"], record.confusion["counts"]
    pairs = [
        (counts[i][j], i, j)
        for i in range(len(names))
        for j in range(len(names))
        if i != j and counts[i][j] > 0
    ]
    if not pairs:
        return "no validation image was confused with another class."
    count, i, j = max(pairs, key=lambda p: (p[0], -p[1], -p[2]))
    support = sum(counts[i])
    return (
        f"most confused pair: true **{names[i]}** predicted as **{names[j]}** in {count} of "
        f"{support} {names[i]} validation images ({100 * count / support:.1f}%)."
    )


def _weakest_class(record: RunRecord) -> str | None:
    classes = {k: v for k, v in (record.per_class or {}).items() if v.get("support", 0) > 0}
    if not classes:
        return None
    name, m = min(classes.items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    return (
        f"weakest class: **{name}**, F1 {m['f1']:.3f} (precision {m['precision']:.3f}, "
        f"recall {m['recall']:.3f}, {int(m['support'])} validation images)."
    )


def _crop_effect(record: RunRecord) -> str | None:
    modes = (record.comparison or {}).get("modes") or {}
    raw, haar = modes.get("raw"), modes.get("haar")
    if not raw or not haar:
        return None
    text = "Haar crop on the new images: "
    if raw.get("accuracy") is not None and haar.get("accuracy") is not None:
        diff = float(haar["accuracy"]) - float(raw["accuracy"])
        verdict = (
            "helped" if diff > 0 else ("hurt" if diff < 0 else "made no difference to accuracy")
        )
        text += (
            f"accuracy {raw['accuracy']:.3f} raw ({raw['labelled']} labelled) vs {haar['accuracy']:.3f} "
            f"cropped ({haar['labelled']} labelled): the crop {verdict}"
        )
        text += f" ({'+' if diff > 0 else '-'}{_points(diff, 0)})" if diff else ""
    else:
        text += "the images carry no labels, so accuracy is unknown"
    effects = Counter(c.get("effect") for c in (record.comparison or {}).get("changes", []))
    text += (
        f"; the crop fixed {effects['fixed by crop']} and broke {effects['broken by crop']} "
        f"prediction(s) and changed the winner of "
        f"{effects['changed (both wrong)'] + effects['changed']} more"
    )
    text += f"; no face found in {haar.get('no_face', 0)} of {haar['images']} image(s)"
    if any(p.get("fallback") for p in record.predictions.get("haar", [])):
        text += " (the whole image was scored for those)"
    raw_scores = {p["image"]: p["scores"] for p in record.predictions.get("raw", [])}
    same = sum(
        1
        for p in record.predictions.get("haar", [])
        if p["image"] in raw_scores
        and all(abs(v - raw_scores[p["image"]].get(c, -1.0)) < 1e-6 for c, v in p["scores"].items())
    )
    if same:
        text += f"; the cropped scores equal the raw ones on {same} of {haar['images']} image(s)"
    if haar["images"] < raw["images"]:
        text += (
            f"; only {haar['images']} of {raw['images']} images were scored cropped "
            "(the rest had no face and no fallback)"
        )
    return text + "."


def _overfitting(record: RunRecord) -> str | None:
    rows = [r for r in record.history if "train/acc" in r and "val/acc" in r]
    if not rows:
        return None
    last = rows[-1]
    train, val = float(last["train/acc"]), float(last["val/acc"])
    if train > val:
        relation = f"train {_points(train, val)} above validation"
    elif train < val:
        relation = f"validation {_points(train, val)} above train"
    else:
        relation = "no gap"
    return (
        f"overfitting check at the last epoch ({int(last['epoch'])}): train accuracy {train:.3f} vs "
        f"validation {val:.3f}, {relation} (train accuracy is measured on augmented batches)."
    )


def _best_epoch_note(record: RunRecord) -> str | None:
    if record.best_epoch is None or record.epochs_run is None:
        return None
    if record.best_epoch == record.epochs_run:
        return (
            f"best epoch {record.best_epoch} of {record.epochs_run} is the last one: {record.monitor} "
            "was still improving when training stopped."
        )
    return (
        f"best epoch {record.best_epoch} of {record.epochs_run}: {record.monitor} did not improve "
        f"in the last {record.epochs_run - record.best_epoch} epoch(s)."
    )


# --- sections -----------------------------------------------------------------------------
class _Figures:
    """Copies run files under ``<report dir>/figures/<key>/`` and returns relative links."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = report_dir
        self.root = report_dir / "figures"
        self.cleared: set[str] = set()

    def copy(self, record: RunRecord, source: Path, name: str) -> str | None:
        if not source.is_file():
            return None
        folder = self.root / record.key
        if record.key not in self.cleared:
            # Start clean: files of an earlier report (e.g. photo sheets) must not linger.
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.cleared.add(record.key)
        shutil.copyfile(source, folder / name)
        return _link(folder / name, self.report_dir)


def _header(title: str, run_set: RunSet, generated: datetime) -> list[str]:
    runs = run_set.runs
    lines = [f"# {title}", "", f"Generated {generated:%Y-%m-%d %H:%M} from {run_set.source}.", ""]
    lines += _synthetic_note(runs)
    datasets: dict[str, RunRecord] = {}
    for record in runs:
        datasets.setdefault(record.dataset, record)
    described = []
    for name, record in sorted(datasets.items()):
        sizes = (
            f", {record.train_images} train / {record.val_images} validation images"
            if record.train_images is not None
            else ""
        )
        described.append(f"{name} ({'SYNTHETIC' if record.synthetic else 'real images'}{sizes})")
    lines += [
        f"- Runs compared: {len(runs)}",
        f"- Datasets: {'; '.join(described)}",
    ]
    if run_set.skipped:
        lines.append(f"- Skipped runs (not finished): {_skipped_text(run_set.skipped)}")
    lines += ["- Pretrained weights per run:"]
    lines += [f"  - `{r.run_id}` ({r.model}): {r.pretrained}" for r in runs]
    return lines + [""]


def _comparison(runs: Sequence[RunRecord], figures: _Figures) -> list[str]:
    lines = [
        "## Comparison",
        "",
        "Validation metrics of the selected (best) checkpoint, best macro-F1 first.",
        "",
    ]
    lines += _synthetic_note(runs)
    header = [
        "model",
        "run",
        "dataset",
        "pretrained",
        "mode",
        "best epoch / run",
        "val acc",
        "top-2",
        "macro-F1",
        "weighted-F1",
        "loss",
        "ECE",
        "params M (total / trainable)",
        "train s",
        "train img/s",
        "latency ms/img (CPU, bs 1)",
        "image size",
    ]
    rows = [
        [
            r.model,
            f"`{r.run_id}`",
            r.dataset + (" (SYNTHETIC)" if r.synthetic else ""),
            r.pretrained,
            r.mode,
            f"{r.best_epoch if r.best_epoch is not None else 'n/a'} / {r.epochs_run or 'n/a'}",
            *(_f(r.best.get(m)) for m in METRICS),
            _params(r),
            _f(r.train_seconds, 1),
            _f(r.train_images_per_s, 1),
            _f(r.latency_ms, 1),
            "n/a" if r.image_size is None else f"{r.image_size}x{r.image_size}",
        ]
        for r in runs
    ]
    lines += _table(header, rows) + [""]
    chart = figures.root / "model_comparison.png"
    title = "validation metrics at the best epoch" + (
        " (SYNTHETIC demo data)" if any(r.synthetic for r in runs) else ""
    )
    plots.plot_model_comparison(
        [{"model": r.label, **{m: r.best.get(m) for m in CHART_METRICS}} for r in runs],
        CHART_METRICS,
        chart,
        title=title,
    )
    lines += [f"![model comparison]({_link(chart, figures.report_dir)})", ""]
    return lines


def _per_model(runs: Sequence[RunRecord], figures: _Figures) -> list[str]:
    lines = ["## Per model", ""]
    for record in runs:
        lines += [f"### {record.label} (`{record.run_id}`)", ""]
        if record.synthetic:
            lines += [f"> **{SYNTHETIC_LABEL}.**", ""]
        if record.path is None:
            lines += [f"Figures are in the W&B run: {record.url or 'n/a'}", ""]
            continue
        for name, caption in RUN_FIGURES.items():
            link = figures.copy(record, record.path / "figures" / name, name)
            lines.append(
                f"![{caption}]({link})"
                if link
                else f"_{caption}: figure missing in the run folder_"
            )
        lines.append("")
        report = record.path / "classification_report.txt"
        if report.is_file():
            lines += ["Classification report (validation, best checkpoint):", "", "```text"]
            lines += [report.read_text().rstrip(), "```", ""]
    return lines


def _new_images(runs: Sequence[RunRecord], figures: _Figures, include_figures: bool) -> list[str]:
    with_predictions = [r for r in runs if r.predictions]
    if not with_predictions:
        return []
    lines = ["## New images", ""]
    for record in with_predictions:
        modes = [m for m in MODES if m in record.predictions]
        by_mode = {m: {p["image"]: p for p in record.predictions[m]} for m in modes}
        images = sorted({name for m in modes for name in by_mode[m]})
        source = Path(str((record.comparison or {}).get("images_dir", ""))).name
        lines += [
            f"### {record.label} (`{record.run_id}`)" + (f" on `{source}`" if source else ""),
            "",
        ]
        if record.synthetic:
            lines += [f"> **{SYNTHETIC_LABEL}.**", ""]
        header = ["image", "true", *(f"{m} winner (score)" for m in modes)]
        header += ["face found"] if "haar" in modes else []
        header += [f"correct {' / '.join(modes)}"]
        rows = []
        for name in images:
            preds = [by_mode[m].get(name) for m in modes]
            true = next((p["true"] for p in preds if p is not None), None)
            row = [name, true or "(unlabelled)"]
            row += [_winner(p) for p in preds]
            if "haar" in modes:
                row.append(_face(by_mode["haar"].get(name)))
            row.append(" / ".join(_correct(p) for p in preds))
            rows.append(row)
        lines += _table(header, rows) + [""]
        stats = (record.comparison or {}).get("modes") or {}
        accuracy = [
            f"{m}: {_f(stats[m]['accuracy'])} on {stats[m]['labelled']} labelled of {stats[m]['images']}"
            for m in modes
            if m in stats
        ]
        if accuracy:
            lines += ["Accuracy " + "; ".join(accuracy) + ".", ""]
        if include_figures:
            for mode in modes:
                link = figures.copy(
                    record,
                    record.path / "predictions" / mode / "sheet.png",
                    f"predictions_{mode}_sheet.png",
                )
                if link:
                    lines += [f"![new images, {mode}]({link})", ""]
    return lines


def _winner(pred: Mapping[str, Any] | None) -> str:
    if pred is None:
        return "not scored"
    score = pred.get("confidence", pred.get("scores", {}).get(pred["winner"]))
    return f"{pred['winner']} ({_f(score, 2)})"


def _face(pred: Mapping[str, Any] | None) -> str:
    if pred is None:
        return "no (skipped)"
    found = pred.get("face_found")
    if found is None:
        return "n/a"
    return "yes" if found else "no (whole image used)"


def _correct(pred: Mapping[str, Any] | None) -> str:
    if pred is None or pred.get("correct") is None:
        return "-"
    return "yes" if pred["correct"] else "no"


def _evaluations(runs: Sequence[RunRecord]) -> list[str]:
    evaluated = [r for r in runs if r.evaluations]
    if not evaluated:
        return []
    names = sorted({name for r in evaluated for name in r.evaluations})
    lines = [
        "## Evaluations",
        "",
        "Accuracy / macro-F1 of the best checkpoint on each evaluated set.",
        "",
    ]
    lines += _synthetic_note(evaluated)
    rows = []
    for record in evaluated:
        cells = []
        for name in names:
            m = record.evaluations.get(name)
            cells.append(
                "-"
                if m is None
                else f"{_f(m.get('acc'))} / {_f(m.get('macro_f1'))} (n={m.get('images', '?')})"
            )
        rows.append([record.label, f"`{record.run_id}`", *cells])
    lines += _table(["model", "run", *names], rows) + [""]
    for name in names:
        first = next(r.evaluations[name] for r in evaluated if name in r.evaluations)
        text = (
            f"- `{name}`: {first.get('dataset', '?')}, face crop {first.get('face', '?')}, "
            f"test-time augmentation {first.get('tta', '?')}"
        )
        absent = first.get("classes_absent") or []
        if absent:
            text += f"; classes absent from the set: {', '.join(absent)}"
        lines.append(text)
    return lines + [""]


def _reproducibility(runs: Sequence[RunRecord], figures: _Figures) -> list[str]:
    lines = ["## Reproducibility", ""]
    for record in runs:
        s = record.summary
        env = s.get("env") or {}
        lines.append(f"- **{record.label}** (`{record.run_id}`)")
        if record.path is not None:
            config = figures.copy(record, record.path / "config.yaml", "config.yaml")
            lines += [
                f"  - git commit: {s.get('git_commit') or 'not recorded (not run from a git checkout)'}",
                f"  - seed: {s.get('seed', 'n/a')}",
                f"  - command: `{s.get('command', 'n/a')}`",
                f"  - config: [config.yaml]({config})" if config else "  - config: missing",
                f"  - environment: python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                f"device {env.get('device', '?')}" + (f" ({env['gpu']})" if env.get("gpu") else ""),
                f"  - created: {s.get('created', 'n/a')}",
            ]
        else:
            lines += [f"  - W&B run: {record.url or 'n/a'}", f"  - seed: {s.get('seed', 'n/a')}"]
    return lines + [""]


# --- entry points -------------------------------------------------------------------------
def build_report(
    run_set: RunSet | Sequence[RunRecord],
    out: Path,
    *,
    title: str = DEFAULT_TITLE,
    include_new_image_figures: bool = True,
    generated: datetime | None = None,
) -> str:
    """The report's markdown; copies its figures under ``<out parent>/figures/`` on the way.

    Args:
        run_set: runs from :func:`collect_runs` / :func:`collect_wandb_runs` (or finished records).
        out: the markdown file the links are made relative to (not written here).
        include_new_image_figures: link the new-image prediction sheets; pass False when the
            new images are real photos that must not go into a committed report.
        generated: the time on the header line (default: now).
    """
    if not isinstance(run_set, RunSet):
        run_set = RunSet(_finish_records(list(run_set)), [], "run records")
    runs = run_set.runs
    if not runs:
        raise NoRunsError(f"no finished runs to report on; {TRAIN_HINT}")
    figures = _Figures(Path(out).parent)
    if not include_new_image_figures:
        # Photo sheets copied by an earlier report must not survive into one that omits them.
        for stale in sorted(figures.root.glob("*/predictions_*_sheet.png")):
            stale.unlink()
    lines = _header(title, run_set, generated or datetime.now())
    lines += _comparison(runs, figures)
    lines += ["## Conclusions", "", "Computed from the numbers above and the run folders.", ""]
    lines += _synthetic_note(runs) + conclusions(runs) + [""]
    lines += _per_model(runs, figures)
    lines += _new_images(runs, figures, include_new_image_figures)
    lines += _evaluations(runs)
    lines += _reproducibility(runs, figures)
    return "\n".join(lines).rstrip() + "\n"


def write_report(markdown: str, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    return out


def report_cli(
    run_paths: Sequence[Path],
    out: Path,
    *,
    wandb_path: str | None = None,
    title: str = DEFAULT_TITLE,
    include_new_image_figures: bool = True,
) -> Path:
    """``poetry run report``: collect runs (folders, or W&B with ``wandb_path``), write the markdown."""
    run_set = collect_wandb_runs(wandb_path) if wandb_path else collect_runs(run_paths)
    out = Path(out)
    markdown = build_report(
        run_set, out, title=title, include_new_image_figures=include_new_image_figures
    )
    write_report(markdown, out)
    log.info(
        "report on %d run(s) written to %s (figures in %s)%s",
        len(run_set.runs),
        out,
        out.parent / "figures",
        f"; skipped {_skipped_text(run_set.skipped)}" if run_set.skipped else "",
    )
    return out
