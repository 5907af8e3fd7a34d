"""Inference on a trained run: the loaded run, ONE batched forward path, and the evaluation writer.

``predict``, ``evaluate`` and the end-of-training evaluation all score images through
:func:`predict_logits` and write their metrics, reports and confusion heatmaps through
:func:`write_evaluation`, so a number means the same thing wherever it appears.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from research import builders, plots
from research.config import CHOICES, flatten, load_saved_config
from research.data.transforms import build_eval_transform
from research.engine import metrics as M
from research.engine.trainer import resolve_device
from research.exported import ExportedModelError, OnnxModel
from research.models.classifier import FERClassifier, mirror_average
from research.tracking.runs import RunFolder, read_checkpoint, write_json, write_npz
from research.tracking.wandb_log import WandbRun, linked_run

log = logging.getLogger(__name__)

TTA_CHOICES = CHOICES["train.tta"]


@dataclass
class LoadedRun:
    """A trained model ready for inference, with the run's own eval transform.

    ``model`` is the PyTorch model of a run folder, or an :class:`OnnxModel` of an exported file
    (:func:`load_onnx`; then ``run`` and ``cfg`` are ``None`` and everything else comes from the
    file's metadata). Either is called the same way by :func:`predict_logits`.
    """

    run: RunFolder | None
    model: FERClassifier | OnnxModel
    transform: Callable[..., dict[str, Any]]  # albumentations: transform(image=HxWx3 uint8)["image"] -> (C, H, W)
    cfg: DictConfig | None
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    run_id: str = "?"
    faces: dict[str, Any] | None = None  # the run's Haar settings (config ``faces``)
    predictions_dir: Path | None = None  # where predictions go by default


def load_run(path: str | Path, *, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from its checkpoint and its eval transform from its config."""
    run = RunFolder.open(path)
    ckpt = read_checkpoint(run.path / f"{which}.pt", summary=run.summary_path)
    cfg = load_saved_config(run.config_path)
    model = builders.build_model(cfg, pretrained=False)
    model.load_state_dict(ckpt["model"])
    dev = resolve_device(device)
    model.to(dev).eval()
    mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    return LoadedRun(
        run, model, builders.eval_transform(cfg, mean, std), cfg, list(ckpt["class_names"]), mean, std, dev,
        run_id=run.run_id, faces=dict(cfg.faces), predictions_dir=run.predictions,
    )


def load_onnx(path: str | Path, *, threads: int | None = None) -> LoadedRun:
    """An exported ONNX model ready for inference through onnxruntime (CPU), with the eval
    transform rebuilt from the file's metadata (no run folder needed).

    Raises:
        ExportedModelError: the file is missing, damaged or lacks this package's metadata.
    """
    model = OnnxModel(path, threads=threads)
    meta = model.metadata
    try:
        transform = build_eval_transform(meta.image_size, channels=meta.channels, mean=meta.mean, std=meta.std)
    except ValueError as err:
        raise ExportedModelError(f"{path}: {err}") from None
    return LoadedRun(
        None, model, transform, None, list(meta.class_names), meta.mean, meta.std, torch.device("cpu"),
        run_id=meta.run_id, faces=dict(meta.faces), predictions_dir=Path(path).parent / "predictions",
    )


def linked_wandb_run(
    loaded: LoadedRun, *, job_type: str, name: str, mode: str | None, extra_config: dict[str, Any] | None = None
) -> WandbRun:
    """The W&B run of work done with a trained run (predict, evaluate), grouped with it."""
    if loaded.run is None or loaded.cfg is None:
        raise ValueError("a W&B run is linked to a run folder; an exported model has none")
    return linked_run(
        source_run_id=loaded.run.run_id, run_dir=loaded.run.path, config={**flatten(loaded.cfg), **(extra_config or {})},
        wandb_cfg=loaded.cfg.wandb, job_type=job_type, name=name, mode=mode,
    )


def predict_logits(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    device: torch.device,
    tta: str = "none",
) -> torch.Tensor:
    """The one forward path: ``(N, C)`` float scores on CPU for batches of ``(B, C, H, W)`` inputs.

    With ``tta="hflip"`` the scores are the log of the mean of the softmax of the image and its
    mirror, so ``softmax`` of the result is the averaged probability.
    """
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta={tta!r} is not one of {TTA_CHOICES}")
    model.eval()
    out = []
    with torch.inference_mode():
        for x in batches:
            x = x.to(device)
            logits = model(x).float()
            if tta == "hflip":
                logits = mirror_average(model, x, logits)
            out.append(logits.cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def preprocess(loaded: LoadedRun, images: Sequence[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 images -> the model's inputs ``(N, C, H, W)`` through the run's eval transform."""
    return torch.stack([loaded.transform(image=img)["image"] for img in images])


def predict_arrays(
    loaded: LoadedRun, images: Sequence[np.ndarray], *, batch_size: int = 64, tta: str = "none"
) -> tuple[np.ndarray, torch.Tensor]:
    """Class probabilities (N, C) and the preprocessed inputs (N, C, H, W) for HxWx3 uint8 images."""
    tensors = preprocess(loaded, images)
    batches = (tensors[i : i + batch_size] for i in range(0, len(tensors), batch_size))
    logits = predict_logits(loaded.model, batches, device=loaded.device, tta=tta)
    return torch.softmax(logits, dim=1).numpy(), tensors


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
