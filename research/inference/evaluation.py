"""Metrics of one set of predictions and the files they are written to, for training and ``evaluate`` alike.

:func:`evaluate_scores` computes every metric of the package over one set of scores (F1 over the
classes present); :func:`write_evaluation` writes the classification report, per-class metrics,
confusion counts and heatmaps and the reliability diagram; :func:`write_predictions` the
per-image predictions the report's paired tests read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from research import plots
from research.engine import metrics as M
from research.tracking.runs import RunFolder, write_json, write_npz


@dataclass
class Evaluation:
    """Metrics of a set of predictions and the tables they came from."""

    metrics: dict[str, float]  # loss (if given), acc, top2, macro_f1, weighted_f1, ece
    probs: np.ndarray  # (N, C)
    targets: np.ndarray  # (N,)
    preds: np.ndarray  # (N,)
    labels: list[int]  # class indices present in targets (F1 and the report cover these)
    class_names: list[str]
    per_class: dict[str, dict[str, float]]
    report_text: str
    report_dict: dict[str, Any]
    counts: np.ndarray  # confusion counts, rows = true
    normalized: np.ndarray  # row-normalised


def evaluate_scores(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], *, loss: float | None = None,
    from_logits: bool = True,
) -> Evaluation:
    """Every metric of the package over one set of predictions; F1 over the classes present."""
    names = list(class_names)
    labels = sorted(set(np.asarray(targets).tolist()))
    metrics = M.compute_metrics(scores, targets, loss=loss, num_classes=len(names), from_logits=from_logits, labels=labels)
    probs = M.softmax(scores) if from_logits else scores
    preds = probs.argmax(1)
    counts, normalized = M.confusion_matrices(targets, preds, len(names))
    return Evaluation(
        metrics=metrics, probs=probs, targets=np.asarray(targets), preds=preds, labels=labels, class_names=names,
        per_class=M.per_class_metrics(targets, preds, names, labels=labels),
        report_text=M.classification_report_text(targets, preds, names, labels=labels),
        report_dict=M.classification_report_dict(targets, preds, names, labels=labels),
        counts=counts, normalized=normalized,
    )


def write_evaluation(
    evaluation: Evaluation, out_dir: Path, *, figures_dir: Path | None = None, label: str, header: str = ""
) -> dict[str, Path]:
    """Write classification_report.txt, per_class.json, confusion_counts.json in ``out_dir`` and the
    confusion heatmaps (counts, row-normalised) and reliability diagram in ``figures_dir``
    (default ``out_dir``). Returns the figures as ``{"confusion_counts": path, ...}``."""
    out_dir = Path(out_dir)
    figures_dir = Path(figures_dir) if figures_dir is not None else out_dir
    figures_dir.mkdir(parents=True, exist_ok=True)
    e = evaluation
    RunFolder(out_dir).write_text("classification_report.txt", f"{label}\n{header}\n\n{e.report_text}")
    write_json(out_dir / "confusion_counts.json", {"class_names": e.class_names, "counts": e.counts.tolist()})
    write_json(out_dir / "per_class.json", e.per_class)
    return {
        "confusion_counts": plots.plot_confusion(
            e.counts, e.class_names, figures_dir / "confusion_counts.png", normalized=False,
            title=f"Confusion (counts) - {label}",
        ),
        "confusion_normalized": plots.plot_confusion(
            e.normalized, e.class_names, figures_dir / "confusion_normalized.png", normalized=True,
            title=f"Confusion (row-normalised recall) - {label}", row_counts=e.counts.sum(axis=1),
        ),
        "reliability": plots.plot_reliability(e.probs, e.targets, figures_dir / "reliability.png", title=f"Reliability - {label}"),
    }


def write_predictions(evaluation: Evaluation, path: Path) -> Path:
    """Per-image predictions in the order the images were scored (the validation loader does not
    shuffle, so runs on the same data line up image by image): ``targets`` and ``preds`` (N,) int,
    ``probs`` (N, C) float32 and ``class_names`` (C,), in one ``.npz`` file."""
    e = evaluation
    write_npz(
        Path(path), targets=np.asarray(e.targets, dtype=np.int64), preds=np.asarray(e.preds, dtype=np.int64),
        probs=np.asarray(e.probs, dtype=np.float32), class_names=np.asarray(e.class_names),
    )
    return Path(path)
