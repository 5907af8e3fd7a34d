"""Markdown rendering of the report: sections, tables and the figures they link (copied, relative links)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from research import plots
from research.report.collect import (
    MODES,
    TRAIN_HINT,
    NoRunsError,
    RunRecord,
    RunSet,
    finish_records,
    skipped_text,
)
from research.report.conclusions import conclusions

DEFAULT_TITLE = "Facial-expression recognition: model comparison"
SYNTHETIC_LABEL = "SYNTHETIC demo data: these numbers say nothing about real faces"
METRICS = ("acc", "top2", "macro_f1", "weighted_f1", "loss", "ece")
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
        datasets.setdefault(record.dataset.name, record)
    described = []
    for name, record in sorted(datasets.items()):
        sizes = (
            f", {record.dataset.train_images} train / {record.dataset.val_images} validation images"
            if record.dataset.train_images is not None
            else ""
        )
        described.append(f"{name} ({'SYNTHETIC' if record.synthetic else 'real images'}{sizes})")
    lines += [
        f"- Runs compared: {len(runs)}",
        f"- Datasets: {'; '.join(described)}",
    ]
    if run_set.skipped:
        lines.append(f"- Skipped runs (not finished): {skipped_text(run_set.skipped)}")
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
            r.dataset.name + (" (SYNTHETIC)" if r.synthetic else ""),
            r.pretrained,
            r.mode,
            f"{r.best_epoch if r.best_epoch is not None else 'n/a'} / {r.epochs_run or 'n/a'}",
            *(_f(r.score(m)) for m in METRICS),
            _params(r),
            _f(r.train_seconds, 1),
            _f(r.train_images_per_s, 1),
            _f(r.latency_ms_per_image, 1),
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
        [{"model": r.label, **{m: r.score(m) for m in CHART_METRICS}} for r in runs],
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
        env = record.env or {}
        lines.append(f"- **{record.label}** (`{record.run_id}`)")
        if record.path is not None:
            config = figures.copy(record, record.path / "config.yaml", "config.yaml")
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
        run_set = RunSet(finish_records(list(run_set)), [], "run records")
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
