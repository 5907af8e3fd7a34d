"""Classification metrics over a whole set of predictions (never averaged per batch).

Everything is computed with scikit-learn from ``(N, C)`` scores and ``(N,)`` integer targets,
so training, evaluation and cross-dataset evaluation share one definition of each metric.

``labels`` (where accepted) restricts F1 and the reports to a subset of class indices, for
datasets in which some classes never occur: a prediction of a class outside the subset is
still an error (a false negative for the true class), and accuracy stays plain accuracy.

scikit-learn is imported by the functions that call it: ``predict`` needs only
:func:`softmax` and the calibration helpers here, and should not pay for loading sklearn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(..., C)`` logits; the max is subtracted first so large logits don't overflow."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _check_scores(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64, copy=False)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got {scores.shape}")
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must have shape ({scores.shape[0]},), got {targets.shape}")
    if scores.shape[0] == 0:
        raise ValueError("cannot compute metrics over zero predictions")
    if targets.min() < 0 or targets.max() >= scores.shape[1]:
        raise ValueError(
            f"targets must lie in [0, {scores.shape[1]}), got {targets.min()}..{targets.max()}"
        )
    return scores, targets


def _resolve_labels(labels: Sequence[int] | None, num_classes: int) -> list[int]:
    if labels is None:
        return list(range(num_classes))
    resolved = [int(label) for label in labels]
    if not resolved:
        raise ValueError("labels must name at least one class")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"labels contain duplicates: {resolved}")
    if min(resolved) < 0 or max(resolved) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {resolved}")
    return resolved


def reliability_bins(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Top-1 confidence vs accuracy in ``n_bins`` equal-width bins over [0, 1].

    Bin ``b`` holds samples whose max probability lies in ``(edges[b], edges[b + 1]]``
    (the first bin also takes 0). Returns ``bin_edges`` (n_bins + 1,), and per bin
    ``accuracy``, ``confidence`` (mean max probability) and ``count`` (int); accuracy and
    confidence are 0 for empty bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs, targets = _check_scores(probs, targets)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bin_index, minlength=n_bins)
    nonempty = np.maximum(count, 1)
    return {
        "bin_edges": edges,
        "accuracy": np.bincount(bin_index, weights=correct, minlength=n_bins) / nonempty,
        "confidence": np.bincount(bin_index, weights=confidence, minlength=n_bins) / nonempty,
        "count": count.astype(np.int64),
    }


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Top-1 ECE: sum over equal-width bins of (bin share of samples) * |accuracy - confidence|."""
    bins = reliability_bins(probs, targets, n_bins)
    weights = bins["count"] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"] - bins["confidence"])))


def negative_log_likelihood(scores: np.ndarray, targets: np.ndarray, *, from_logits: bool = True) -> float:
    """Plain cross-entropy of ``(N, C)`` logits (or probabilities) against ``(N,)`` targets, in nats."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(targets))
    if from_logits:
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_probs = shifted[rows, targets] - np.log(np.exp(shifted).sum(axis=1))
    else:
        log_probs = np.log(np.clip(scores[rows, targets], 1e-12, None))
    return float(-np.mean(log_probs))


def compute_metrics(
    logits_or_probs: np.ndarray,
    targets: np.ndarray,
    *,
    loss: float | None = None,
    num_classes: int | None = None,
    from_logits: bool = True,
    labels: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics over a whole set of predictions.

    Args:
        logits_or_probs: ``(N, C)`` logits (``from_logits=True``) or probabilities.
        targets: ``(N,)`` integer class indices.
        loss: the training criterion over the same predictions, copied to ``"loss"`` when given.
        num_classes: expected ``C``; checked against the score width when given.
        labels: class indices that F1 is averaged over (default: all ``C``). A class in
            ``labels`` that neither occurs nor is predicted scores F1 = 0, which is why
            cross-dataset evaluation passes only the classes present.

    Returns:
        ``loss`` (if given), ``nll`` (plain cross-entropy: the mean negative log-probability of the true
        class, without class weights or label smoothing), ``acc``, ``top2``, ``macro_f1``, ``weighted_f1``,
        ``ece`` as floats.
        ``acc`` and ``top2`` are over all samples and all ``C`` classes regardless of ``labels``.
    """
    from sklearn.metrics import f1_score, top_k_accuracy_score

    scores, targets = _check_scores(logits_or_probs, targets)
    n_scores = scores.shape[1]
    if num_classes is not None and num_classes != n_scores:
        raise ValueError(f"num_classes={num_classes} but scores have {n_scores} columns")
    probs = softmax(scores) if from_logits else scores
    preds = probs.argmax(axis=1)
    f1_labels = _resolve_labels(labels, n_scores)

    metrics: dict[str, float] = {}
    if loss is not None:
        metrics["loss"] = float(loss)
    metrics["nll"] = negative_log_likelihood(scores, targets, from_logits=from_logits)
    metrics["acc"] = float(np.mean(preds == targets))
    # sklearn warns and returns 1.0 when k >= C; say so without the warning.
    metrics["top2"] = (
        1.0
        if n_scores <= 2
        else float(top_k_accuracy_score(targets, probs, k=2, labels=list(range(n_scores))))
    )
    for average in ("macro", "weighted"):
        metrics[f"{average}_f1"] = float(
            f1_score(targets, preds, labels=f1_labels, average=average, zero_division=0)
        )
    metrics["ece"] = expected_calibration_error(probs, targets)
    return metrics


def confusion_matrices(
    targets: np.ndarray, preds: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix, rows = true class, columns = predicted class.

    Returns ``(counts, normalized)``: ``(C, C)`` int64 counts and the row-normalised float
    matrix (each row sums to 1, or is all 0 for a class with no samples).
    """
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(
        np.asarray(targets), np.asarray(preds), labels=list(range(num_classes))
    ).astype(np.int64)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(
        counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0
    )
    return counts, normalized


def _report_kwargs(class_names: Sequence[str], labels: Sequence[int] | None) -> dict[str, object]:
    report_labels = _resolve_labels(labels, len(class_names))
    return {
        "labels": report_labels,
        "target_names": [class_names[i] for i in report_labels],
        "zero_division": 0,
    }


def classification_report_text(
    targets: np.ndarray,
    preds: np.ndarray,
    class_names: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
) -> str:
    """sklearn's text report (3 digits) over ``labels`` (default: every class in ``class_names``)."""
    from sklearn.metrics import classification_report

    return classification_report(
        np.asarray(targets), np.asarray(preds), digits=3, **_report_kwargs(class_names, labels)
    )


def classification_report_dict(
    targets: np.ndarray,
    preds: np.ndarray,
    class_names: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
) -> dict:
    """sklearn's report as a dict: per class name, plus the ``macro avg``/``weighted avg`` rows."""
    from sklearn.metrics import classification_report

    return classification_report(
        np.asarray(targets),
        np.asarray(preds),
        output_dict=True,
        **_report_kwargs(class_names, labels),
    )


def per_class_metrics(
    targets: np.ndarray,
    preds: np.ndarray,
    class_names: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """``{class_name: {"precision", "recall", "f1", "support"}}`` for each class in ``labels``."""
    from sklearn.metrics import precision_recall_fscore_support

    report_labels = _resolve_labels(labels, len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(targets), np.asarray(preds), labels=report_labels, zero_division=0
    )
    return {
        class_names[label]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": float(support[i]),
        }
        for i, label in enumerate(report_labels)
    }
