"""Markdown rendering of the report: sections, tables and the figures they link (copied, relative links).

Single runs are compared per dataset (one section with its table, chart and conclusions per
dataset); sweeps get their own section, one subsection per sweep. Only
``compare_across_datasets=True`` ranks runs of different datasets together.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from research import plots
from research.inference.comparison import CROP_MODES, summary_table
from research.report.card import write_model_cards
from research.report.collect import (
    MODES,
    TRAIN_HINT,
    NoRunsError,
    RunRecord,
    RunSet,
    SweepRecord,
    dataset_groups,
    finish_records,
    skipped_text,
)
from research.report.conclusions import conclusions
from research.report.statistics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_METRICS,
    IGNORED_KEYS,
    RunGroup,
    group_runs,
)
from research.tracking.names import safe_name

MODEL_CARDS = "model_cards"  # folder beside the report: one card per run
DEFAULT_TITLE = "Facial-expression recognition: model comparison"
SYNTHETIC_LABEL = "SYNTHETIC demo data: these numbers say nothing about real faces"
METRICS = ("acc", "top2", "macro_f1", "weighted_f1", "loss", "nll", "ece")
CHART_METRICS = ("acc", "top2", "macro_f1", "weighted_f1")
# figure file in the run folder -> caption in the per-model section
RUN_FIGURES = {
    "curves_loss.png": "loss",
    "curves_acc.png": "accuracy",
    "curves_top2.png": "top-2 accuracy",
    "curves_macro_f1.png": "macro-F1",
    "curves_lr.png": "learning rate",
    "confusion_counts.png": "confusion matrix (counts)",
    "confusion_normalized.png": "confusion matrix (row-normalised)",
    "reliability.png": "reliability diagram",
}


def _or_na(value: Any) -> Any:
    return "n/a" if value is None else value


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


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


def _dataset_kind(record: RunRecord) -> str:
    """``SYNTHETIC demo data`` or ``real images``; empty when the dataset's name already says it is synthetic
    (the demo set is called "synthetic demo data": no title says it twice)."""
    if record.synthetic:
        return "" if "synthetic" in record.dataset.name.lower() else "SYNTHETIC demo data"
    return "real images"


def _synthetic_suffix(record: RunRecord) -> str:
    """`` (SYNTHETIC demo data)`` after a synthetic dataset's name, unless the name says so already."""
    kind = _dataset_kind(record) if record.synthetic else ""
    return f" ({kind})" if kind else ""


def _dataset_text(record: RunRecord) -> str:
    """``NAME (SYNTHETIC demo data)`` or ``NAME (real images)``: which data a run was trained on."""
    kind = _dataset_kind(record)
    return f"{record.dataset.name} ({kind})" if kind else record.dataset.name


def _slug(text: str) -> str:
    return safe_name(text).strip("-") or "dataset"


def _params(record: RunRecord) -> str:
    if record.params_total is None:
        return "n/a"
    trainable = "n/a" if record.params_trainable is None else f"{record.params_trainable / 1e6:.2f}"
    return f"{record.params_total / 1e6:.2f} / {trainable}"


# --- sections -----------------------------------------------------------------------------
class _Figures:
    """Copies run files under ``<report dir>/figures/<key>/`` and returns relative links."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = report_dir
        self.root = report_dir / "figures"
        self.cleared: set[str] = set()

    def copy(self, key: str, source: Path, name: str) -> str | None:
        """Copy ``source`` to ``figures/<key>/<name>``; the link, or ``None`` when there is no such file."""
        if not source.is_file():
            return None
        folder = self.root / key
        if key not in self.cleared:
            # Start clean: files of an earlier report (e.g. photo sheets) must not linger.
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.cleared.add(key)
        shutil.copyfile(source, folder / name)
        return _link(folder / name, self.report_dir)


def _header(title: str, run_set: RunSet, generated: datetime, compare_across_datasets: bool) -> list[str]:
    runs = run_set.runs
    lines = [f"# {title}", "", f"Generated {generated:%Y-%m-%d %H:%M} from {run_set.source}.", ""]
    lines += _synthetic_note(runs)
    groups = dataset_groups(runs)
    if compare_across_datasets and len(groups) > 1:
        how = f"ranked together across {len(groups)} datasets (asked for with --compare-across-datasets)"
    elif len(groups) > 1:
        how = f"on {len(groups)} datasets, compared only within each dataset"
    else:
        how = "on 1 dataset"
    lines.append(f"- Single runs: {len(runs)}, {how}" if runs else "- Single runs: none")
    if groups:
        lines.append(f"- Datasets: {'; '.join(_dataset_heading(group) for group in groups)}")
    if run_set.sweeps:
        sweeps = ", ".join(f"`{s.sweep_id}` ({len(s.trials)} trial(s))" for s in run_set.sweeps)
        lines.append(f"- Sweeps (summarised per sweep, not ranked with the single runs): {sweeps}")
    if run_set.skipped:
        lines.append(f"- Skipped runs (not finished, or unreadable): {skipped_text(run_set.skipped)}")
    if runs:
        lines += ["- Pretrained weights per run:"]
        lines += [f"  - `{r.run_id}` ({r.model}): {r.pretrained}" for r in runs]
    return lines + [""]


def _sizes(group: Sequence[RunRecord]) -> list[tuple[int | None, int | None]]:
    return sorted(
        {(r.dataset.train_images, r.dataset.val_images) for r in group if r.dataset.train_images is not None},
        key=lambda size: (size[0] or 0, size[1] or 0),
    )


def _dataset_heading(group: Sequence[RunRecord]) -> str:
    """``NAME (real images, 700 train / 200 validation)`` for the runs of one dataset."""
    first = group[0]
    sizes = _sizes(group)
    parts = [_dataset_kind(first)]
    if len(sizes) == 1:
        parts.append(f"{sizes[0][0]} train / {_or_na(sizes[0][1])} validation")
    elif sizes:
        parts.append("train / validation sizes differ: " + ", ".join(f"{t} / {_or_na(v)}" for t, v in sizes))
    parts = [p for p in parts if p]
    return f"{first.dataset.name} ({', '.join(parts)})" if parts else first.dataset.name


def _dataset_section(group: Sequence[RunRecord], figures: _Figures, chart_name: str) -> list[str]:
    """One dataset's comparison table, chart and conclusions (its runs only)."""
    name = group[0].dataset.name
    lines = [f"## Dataset: {_dataset_heading(group)}", ""]
    lines += _synthetic_note(group)
    if len(_sizes(group)) > 1:
        lines += [
            f"> Caution: the runs on {name} do not all have the same train / validation sizes; their "
            "validation scores are comparable only if they used the same validation images.",
            "",
        ]
    title = f"{name}: validation metrics at the best epoch{_synthetic_suffix(group[0])}"
    lines += [f"### Comparison on {name}", ""]
    lines += _comparison_table(group, figures, chart_name, title, with_dataset=False)
    lines += _per_class(group_runs(group), name)
    lines += [f"### Conclusions on {name}", "", "Computed from the numbers above and the run folders.", ""]
    lines += conclusions(group) + [""]
    return lines


def _comparison_across_datasets(runs: Sequence[RunRecord], figures: _Figures) -> list[str]:
    """Every single run in one ranking, whatever its dataset (only on request)."""
    lines = ["## Comparison", ""]
    if len(dataset_groups(runs)) > 1:
        lines += [
            "Runs on different datasets are ranked together here because the report was asked to "
            "(--compare-across-datasets); see the caution under Conclusions.",
            "",
        ]
    lines += _synthetic_note(runs)
    kinds = {r.synthetic for r in runs}
    title = "validation metrics at the best epoch" + (
        " (mixed: real and SYNTHETIC demo data)"
        if len(kinds) > 1
        else " (SYNTHETIC demo data)" if kinds == {True} else ""
    )
    return lines + _comparison_table(runs, figures, "model_comparison.png", title, with_dataset=True)


def _comparison_table(
    runs: Sequence[RunRecord], figures: _Figures, chart_name: str, title: str, *, with_dataset: bool
) -> list[str]:
    """The table of ``runs`` (one row per configuration, best mean macro-F1 first) and their chart."""
    groups = group_runs(runs)
    lines = [
        "Validation metrics of the selected (best) checkpoint, best macro-F1 first; repeated runs of one "
        "configuration share a row.",
        "",
    ]
    header = [
        "model",
        "run",
        *(["dataset"] if with_dataset else []),
        "pretrained",
        "mode",
        "n seeds",
        "best epoch / run",
        "val acc",
        "top-2",
        "macro-F1",
        "weighted-F1",
        "loss",
        "NLL",
        "ECE",
        "acc 95% CI",
        "macro-F1 95% CI",
        "params M (total / trainable)",
        "train s",
        "train img/s",
        "latency ms/img (CPU, bs 1)",
        "image size",
    ]
    rows = []
    for g in groups:
        r = g.best_run
        rows.append([
            g.label,
            ", ".join(f"`{run.run_id}`" for run in g.runs),
            *([r.dataset.name + _synthetic_suffix(r)] if with_dataset else []),
            r.pretrained,
            r.mode,
            g.n,
            ", ".join(str(_or_na(run.best_epoch)) for run in g.runs) + f" / {r.epochs_run or 'n/a'}",
            *(_mean_std(g, m) for m in METRICS),
            *(_interval(g.ci(m)) for m in CI_METRICS),
            _params(r),
            _f(g.mean_of("train_seconds"), 1),
            _f(g.mean_of("train_images_per_s"), 1),
            _f(g.mean_of("latency_ms_per_image"), 1),
            "n/a" if r.image_size is None else f"{r.image_size}x{r.image_size}",
        ])
    lines += _table(header, rows) + [""]
    lines += _statistics_note(groups)
    chart = figures.root / chart_name
    plots.plot_model_comparison(
        [{"model": g.label, **{m: g.mean(m) for m in CHART_METRICS}} for g in groups],
        CHART_METRICS,
        chart,
        title=title,
    )
    lines += [f"![model comparison]({_link(chart, figures.report_dir)})", ""]
    return lines


def _mean_std(group: RunGroup, metric: str) -> str:
    """``0.750`` for one run, ``0.750 ± 0.012`` (mean ± sample std) for repeated runs."""
    std = group.std(metric)
    return _f(group.mean(metric)) if std is None else f"{group.mean(metric):.3f} ± {std:.3f}"


def _interval(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _statistics_note(groups: Sequence[RunGroup]) -> list[str]:
    """How the spread and the intervals in the table were computed."""
    lines = [
        f"n seeds: runs of one configuration (the same config.yaml except {', '.join(IGNORED_KEYS)} and "
        "wandb.*); for n > 1 every metric is the mean ± sample std (ddof 1) over those runs. "
        f"95% CI: percentile bootstrap over the validation images ({BOOTSTRAP_RESAMPLES} resamples, seed "
        f"{BOOTSTRAP_SEED}, so the report is deterministic); each resample scores every run of the row on the "
        "same drawn images and averages the runs (per run, then averaged; not pooled). It shows how much "
        "the score depends on which images happen to be in the validation set. loss: the run's training "
        "criterion (cross-entropy with its label smoothing and class weights, so it compares only runs "
        "trained with the same ones); NLL: plain cross-entropy (n/a for runs recorded before it was logged)."
    ]
    missing = [g for g in groups if g.ci("acc") is None]
    if missing:
        lines[0] += (
            " n/a: no per-image validation predictions (val_predictions.npz) in every run of the row, "
            "e.g. runs trained before they were saved."
        )
    return lines + [""]


def _per_class(groups: Sequence[RunGroup], name: str) -> list[str]:
    """Per-class validation F1 of each configuration (mean over its runs), with the class's image count."""
    with_classes = [g for g in groups if any(r.per_class for r in g.runs)]
    if not with_classes:
        return []
    order = list(with_classes[0].best_run.class_names or [])
    present = {c for g in with_classes for r in g.runs for c in (r.per_class or {})}
    classes = [c for c in order if c in present] + sorted(present - set(order))
    rows = []
    for cls in classes:
        supports = sorted({int(r.per_class[cls]["support"]) for g in with_classes for r in g.runs if cls in (r.per_class or {})})
        row: list[Any] = [cls, " / ".join(str(s) for s in supports)]
        for g in with_classes:
            f1s = [float(r.per_class[cls]["f1"]) for r in g.runs if cls in (r.per_class or {})]
            if not f1s:
                row.append("-")
            elif len(f1s) == 1:
                row.append(_f(f1s[0]))
            else:
                row.append(f"{sum(f1s) / len(f1s):.3f} ± {float(np.std(f1s, ddof=1)):.3f}")
        rows.append(row)
    lines = [
        f"### Per-class F1 on {name}",
        "",
        "Validation F1 per class of the selected checkpoint (mean ± sample std over the seeds of repeated "
        "runs) and the number of validation images of the class.",
        "",
    ]
    return lines + _table(["class", "val images", *(g.label for g in with_classes)], rows) + [""]


def _chart_names(groups: Sequence[Sequence[RunRecord]]) -> list[str]:
    """One distinct chart file per dataset: ``comparison_<dataset>[_synthetic].png``."""
    names: list[str] = []
    for group in groups:
        stem = f"comparison_{_slug(group[0].dataset.name)}" + ("_synthetic" if group[0].synthetic else "")
        name, n = f"{stem}.png", 1
        while name in names:
            n += 1
            name = f"{stem}-{n}.png"
        names.append(name)
    return names


def _sweeps(sweeps: Sequence[SweepRecord], figures: _Figures) -> list[str]:
    """One subsection per sweep: metric, trial states, best trial and the trials ranked by the metric."""
    if not sweeps:
        return []
    lines = [
        "## Sweeps",
        "",
        "Each sweep is summarised on its own; its trials are not ranked with the single runs above.",
        "",
    ]
    for sweep in sweeps:
        lines += [f"### Sweep `{sweep.sweep_id}`", ""]
        datasets = sorted({_dataset_text(r) for r in sweep.runs if r.finished})
        if any(r.synthetic for r in sweep.runs):
            lines += [f"> **{SYNTHETIC_LABEL}.**", ""]
        states = Counter(t.get("state") or "?" for t in sweep.trials)
        lines += [
            f"- Metric: `{sweep.metric}` ({sweep.goal})",
            f"- Trials: {len(sweep.trials)}"
            + (f" ({', '.join(f'{n} {state}' for state, n in sorted(states.items()))})" if states else ""),
        ]
        if datasets:
            lines.append(f"- Dataset: {'; '.join(datasets)}")
        if sweep.best is not None:
            params = ", ".join(f"{k}={sweep.best.get(k)}" for k in sweep.params if k in sweep.best)
            lines.append(
                f"- Best trial: {sweep.best.get('trial', '?')} (run `{sweep.best.get('run_id', '?')}`), "
                f"{sweep.metric} {_f(sweep.trial_metric(sweep.best))}" + (f", with {params}" if params else "")
            )
        else:
            lines.append("- Best trial: none (no trial has a metric yet)")
        if sweep.url:
            lines.append(f"- On W&B: [{sweep.name or sweep.sweep_id}]({sweep.url})")
        config = figures.copy(f"sweeps/{_slug(sweep.sweep_id)}", sweep.path / "sweep.yaml", "sweep.yaml") if sweep.path else None
        if config:
            lines.append(f"- Sweep config: [sweep.yaml]({config})")
        lines.append("")
        if not sweep.trials:
            lines += ["No trial recorded (trials.csv is missing).", ""]
            continue
        header = ["trial", "run", *sweep.params, sweep.metric, "state", "epochs"]
        rows = [
            [
                t.get("trial") or "?",
                f"`{t.get('run_id') or '?'}`",
                *(t.get(k) or "-" for k in sweep.params),
                _f(sweep.trial_metric(t)),
                t.get("state") or "?",
                t.get("epochs") or "n/a",
            ]
            for t in sweep.ranked_trials()
        ]
        lines += [f"Trials, best {sweep.metric} first ({sweep.goal}):", ""]
        lines += _table(header, rows) + [""]
    return lines


def _per_model(runs: Sequence[RunRecord], figures: _Figures, cards: Mapping[str, Path]) -> list[str]:
    if not runs:
        return []
    lines = ["## Per model", ""]
    for record in runs:
        lines += [f"### {record.model} (`{record.run_id}`)", "", f"Trained on {_dataset_text(record)}.", ""]
        if record.key in cards:
            lines += [f"Model card: [{MODEL_CARDS}/{cards[record.key].name}]({_link(cards[record.key], figures.report_dir)})", ""]
        if record.synthetic:
            lines += [f"> **{SYNTHETIC_LABEL}.**", ""]
        if record.path is None:
            lines += [f"Figures are in the W&B run: {record.url or 'n/a'}", ""]
            continue
        for name, caption in RUN_FIGURES.items():
            link = figures.copy(record.key, record.path / "figures" / name, name)
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
            f"### {record.model} (`{record.run_id}`)" + (f" on `{source}`" if source else ""),
            "",
            f"Model trained on {_dataset_text(record)}.",
            "",
        ]
        if record.synthetic:
            lines += [f"> **{SYNTHETIC_LABEL}.**", ""]
        header = ["image", "true", *(f"{m} winner (score)" for m in modes)]
        crop_modes = [m for m in CROP_MODES if m in modes]
        header += [f"face found ({m})" if len(crop_modes) > 1 else "face found" for m in crop_modes]
        header += [f"correct {' / '.join(modes)}"]
        rows = []
        for name in images:
            preds = [by_mode[m].get(name) for m in modes]
            true = next((p["true"] for p in preds if p is not None), None)
            row = [name, true or "(unlabelled)"]
            row += [_winner(p) for p in preds]
            row += [_face(by_mode[m].get(name)) for m in crop_modes]
            row.append(" / ".join(_correct(p) for p in preds))
            rows.append(row)
        lines += _table(header, rows) + [""]
        stats = (record.comparison or {}).get("modes") or {}
        if len([m for m in modes if m in stats]) > 1:
            lines += ["Side by side (" + " / ".join(m for m in modes if m in stats) + "):", ""]
            lines += summary_table(record.comparison) + [""]
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
                    record.key,
                    record.path / "predictions" / mode / "sheet.png",
                    f"predictions_{mode}_sheet.png",
                )
                if link:
                    lines += [f"![new images, {mode}]({link})", ""]
            link = figures.copy(record.key, record.path / "predictions" / "gradcam_sheet.png", "predictions_gradcam_sheet.png")
            if link:
                lines += [
                    "Grad-CAM of the predicted class over each model input (red = the regions that raised "
                    "its score most; each map scaled to its own maximum):",
                    "",
                    f"![Grad-CAM, {' / '.join(modes)}]({link})",
                    "",
                ]
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
        rows.append([record.model, f"`{record.run_id}`", _dataset_text(record), *cells])
    lines += _table(["model", "run", "trained on", *names], rows) + [""]
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
    if not runs:
        return []
    lines = ["## Reproducibility", ""]
    for record in runs:
        env = record.env or {}
        lines += [f"- **{record.model}** (`{record.run_id}`)", f"  - dataset: {_dataset_text(record)}, root `{record.dataset.root}`"]
        if record.path is not None:
            config = figures.copy(record.key, record.path / "config.yaml", "config.yaml")
            lines += [
                f"  - git commit: {record.git_commit or 'not recorded (not run from a git checkout)'}",
                f"  - seed: {_or_na(record.seed)}",
                f"  - command: `{_or_na(record.command)}`",
                f"  - config: [config.yaml]({config})" if config else "  - config: missing",
                f"  - environment: python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                f"device {env.get('device', '?')}" + (f" ({env['gpu']})" if env.get("gpu") else ""),
                f"  - created: {_or_na(record.created)}",
            ]
        else:
            lines += [f"  - W&B run: {record.url or 'n/a'}", f"  - seed: {_or_na(record.seed)}"]
    return lines + [""]


def build_report(
    run_set: RunSet | Sequence[RunRecord],
    out: Path,
    *,
    title: str = DEFAULT_TITLE,
    include_new_image_figures: bool = True,
    generated: datetime | None = None,
    compare_across_datasets: bool = False,
) -> str:
    """The report's markdown; copies its figures under ``<out parent>/figures/`` on the way.

    Args:
        run_set: runs from :func:`collect_runs` / :func:`collect_wandb_runs` (or finished records).
        out: the markdown file the links are made relative to (not written here).
        include_new_image_figures: link the new-image prediction sheets; pass False when the
            new images are real photos that must not go into a committed report.
        generated: the time on the header line (default: now).
        compare_across_datasets: rank every single run in one table, chart and set of conclusions
            (with a caution when the datasets differ) instead of one section per dataset.
    """
    if not isinstance(run_set, RunSet):
        run_set = RunSet(finish_records(list(run_set)), [], "run records")
    if not run_set.runs and not run_set.sweeps:
        raise NoRunsError(f"no finished runs to report on; {TRAIN_HINT}")
    figures = _Figures(Path(out).parent)
    if not include_new_image_figures:
        # Photo sheets copied by an earlier report must not survive into one that omits them.
        for stale in sorted(figures.root.glob("*/predictions_*_sheet.png")):
            stale.unlink()
    lines = _header(title, run_set, generated or datetime.now(), compare_across_datasets)
    if compare_across_datasets:
        runs = run_set.runs
        if runs:
            lines += _comparison_across_datasets(runs, figures)
            lines += ["## Conclusions", "", "Computed from the numbers above and the run folders.", ""]
            lines += _synthetic_note(runs) + conclusions(runs) + [""]
    else:
        groups = dataset_groups(run_set.runs)
        for group, chart_name in zip(groups, _chart_names(groups), strict=True):
            lines += _dataset_section(group, figures, chart_name)
        runs = [r for group in groups for r in group]  # the later sections follow the dataset order
    lines += _sweeps(run_set.sweeps, figures)
    cards = write_model_cards(runs, Path(out).parent / MODEL_CARDS) if runs else {}
    lines += _per_model(runs, figures, cards)
    lines += _new_images(runs, figures, include_new_image_figures)
    lines += _evaluations(runs)
    lines += _reproducibility(runs, figures)
    return "\n".join(lines).rstrip() + "\n"


def write_report(markdown: str, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    return out
