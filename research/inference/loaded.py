"""A trained model ready for inference, and the ONE batched forward path.

``predict``, ``evaluate``, export's parity check and the end-of-training evaluation all score
images through :func:`predict_logits` (and write their metrics through
:func:`research.inference.evaluation.write_evaluation`), so a number means the same thing wherever
it appears. :func:`load_run` rebuilds a run's model and eval transform from its folder;
:func:`load_onnx` an exported model's from the file's metadata.
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

from research.builders.model import build_model, eval_transform
from research.config import CHOICES, flatten, load_saved_config
from research.data.transforms import build_eval_transform
from research.engine.runtime import resolve_device
from research.inference.model_file import ExportedModelError, OnnxModel
from research.models.classifier import FERClassifier, mirror_average
from research.models.shipped import (
    DEFAULT,
    ShippedModel,
    ShippedModelError,
    is_shipped_name,
    shipped_model,
)
from research.tracking.runs import RunFolder, read_checkpoint
from research.tracking.wandb_log import WandbRun, linked_run, training_run

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
    outputs: Path | None = None  # where predictions, evaluations and exports go by default (the run folder)
    shipped: ShippedModel | None = None  # set when this is a model shipped with the package

    @property
    def predictions_dir(self) -> Path | None:
        return None if self.outputs is None else self.outputs / "predictions"

    @property
    def description(self) -> str:
        """Which model scores, for the log: the run folder, or the shipped model and what it is."""
        if self.shipped is not None:
            return f"the shipped model {self.shipped.name} ({self.shipped.summary})"
        return f"run {self.run_id}" if self.run is not None else f"exported model {self.run_id}"


def load_run(path: str | Path | None = None, *, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from its checkpoint and its eval transform from its config. ``None`` (or the
    name of a shipped model, ``fer2013``) loads the model shipped with the package, its checksum checked;
    its outputs go to ``runs/shipped-<name>/``, never into the installed package."""
    name = DEFAULT if path is None else str(path)
    shipped = shipped_model(name) if path is None or is_shipped_name(name) else None
    if shipped is not None and which != "best":
        raise ShippedModelError(f"the shipped model {shipped.name} has only its best checkpoint; drop --checkpoint {which}")
    run = RunFolder.open(shipped.folder if shipped is not None else path)
    ckpt = read_checkpoint(run.path / f"{which}.pt", summary=run.summary_path)
    cfg = load_saved_config(run.config_path)
    model = build_model(cfg, pretrained=False)
    model.load_state_dict(ckpt["model"])
    dev = resolve_device(device)
    model.to(dev).eval()
    mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    return LoadedRun(
        run, model, eval_transform(cfg, mean, std), cfg, list(ckpt["class_names"]), mean, std, dev,
        run_id=shipped.name if shipped is not None else run.run_id, faces=dict(cfg.faces),
        outputs=shipped.outputs if shipped is not None else run.path, shipped=shipped,
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
        run_id=meta.run_id, faces=dict(meta.faces), outputs=Path(path).parent,
    )


def linked_wandb_run(
    loaded: LoadedRun, *, job_type: str, name: str, mode: str | None, extra_config: dict[str, Any] | None = None
) -> WandbRun:
    """The W&B run of work done with a trained run (predict, evaluate), grouped with it."""
    if loaded.run is None or loaded.cfg is None or loaded.outputs is None:
        raise ValueError("a W&B run is linked to a run folder; an exported model has none")
    return linked_run(
        source_run_id=loaded.run_id, run_dir=loaded.outputs, config={**flatten(loaded.cfg), **(extra_config or {})},
        wandb_cfg=loaded.cfg.wandb, job_type=job_type, name=name, mode=mode,
    )


def training_wandb_run(loaded: LoadedRun, *, mode: str | None, job_type: str) -> WandbRun:
    """The W&B run to log work done with a trained run into: the training run itself (reopened online, or
    its upload list for ``sync-runs``); for a run trained without W&B, a run of its own, grouped with it."""
    if loaded.run is None or loaded.cfg is None:
        raise ValueError("a W&B run is linked to a run folder; an exported model has none")
    if loaded.shipped is not None:  # its training run is not the user's: work done with it gets a run of its own
        return linked_wandb_run(loaded, job_type=job_type, name=job_type, mode=mode)
    recorded = loaded.run.read_summary().get("wandb") or {}
    wandb_run = training_run(run_id=loaded.run.run_id, run_dir=loaded.run.path, recorded=recorded,
                             wandb_cfg=loaded.cfg.wandb, mode=mode, init_timeout=loaded.cfg.wandb.init_timeout)
    if wandb_run is not None:
        return wandb_run
    log.info("run %s was trained without W&B (wandb.mode=disabled): logging to a W&B run of its own, %s-%s",
             loaded.run.run_id, loaded.run.run_id, job_type)
    return linked_wandb_run(loaded, job_type=job_type, name=job_type, mode=mode)


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
