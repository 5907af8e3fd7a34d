"""``train(cfg)``: turns a validated config into components and runs one training run.

This is the only place (with the CLI) that reads the whole config; everything it builds
receives plain arguments. It returns the run's summary so the sweep runner, the
pipeline and the tests call it directly.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from research.config import flatten, to_yaml
from research.data.classes import CANONICAL_CLASSES
from research.data.datasets import DataBundle, load_datasets
from research.data.transforms import build_eval_transform, build_train_transform, resolve_augment
from research.engine import metrics as M
from research.engine.trainer import (
    EpochOutput,
    Trainer,
    measure_latency,
    resolve_device,
    seed_everything,
    seed_worker,
)
from research.models import create_model
from research.models.classifier import FERClassifier, count_parameters
from research.tracking.runs import RunFolder, new_run_id, write_json
from research.tracking.wandb_log import WandbRun

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("val/loss", "val/acc", "val/top2", "val/macro_f1", "val/weighted_f1", "val/ece")


def build_model(cfg: DictConfig) -> FERClassifier:
    m = cfg.model
    model = create_model(
        m.name, len(CANONICAL_CLASSES), pretrained=m.pretrained, pretrained_file=m.pretrained_file,
        pretrained_fallback=m.pretrained_fallback, in_chans=cfg.data.channels, dropout=m.dropout,
    )
    if m.mode == "frozen":
        model.freeze_backbone()
    return model


def normalization(cfg: DictConfig, model: FERClassifier) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean/std`` when set, else the model's own (ImageNet for pretrained backbones)."""
    mean = tuple(cfg.data.mean) if cfg.data.mean is not None else model.mean
    std = tuple(cfg.data.std) if cfg.data.std is not None else model.std
    return mean, std


def eval_transform_from_config(cfg: DictConfig, mean, std):
    """The deterministic preprocessing of a run: validation, evaluate and predict all use it."""
    return build_eval_transform(cfg.data.image_size, channels=cfg.data.channels, mean=mean, std=std)


def augment_params(cfg: DictConfig):
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.augment).items() if k != "preset"}
    return resolve_augment(cfg.augment.preset, **overrides)


def build_loaders(bundle: DataBundle, cfg: DictConfig, *, seed: int) -> tuple[DataLoader, DataLoader]:
    d = cfg.data
    generator = torch.Generator().manual_seed(seed)
    common = dict(
        batch_size=d.batch_size, num_workers=d.num_workers, pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker if d.num_workers else None, persistent_workers=False,
    )
    if d.sampler == "balanced":
        counts = np.bincount(bundle.train.targets, minlength=len(CANONICAL_CLASSES)).astype(float)
        weights = [1.0 / counts[t] for t in bundle.train.targets]
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
        train_loader = DataLoader(bundle.train, sampler=sampler, drop_last=False, **common)
    else:
        train_loader = DataLoader(bundle.train, shuffle=True, generator=generator, **common)
    val_loader = DataLoader(bundle.val, shuffle=False, **common)
    return train_loader, val_loader


def build_optimizer(model: nn.Module, o: DictConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only (not on biases and norm parameters)."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=o.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, o: DictConfig, *, epochs: int, steps_per_epoch: int, monitor: str):
    """Returns (scheduler or None, interval "step" | "epoch")."""
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma), "epoch"
    if o.scheduler == "plateau":
        mode = "min" if monitor.endswith("loss") else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=o.gamma, patience=2), "epoch"
    total = max(1, epochs * steps_per_epoch)
    warmup = min(o.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if o.scheduler == "none":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"


def build_loss(t: DictConfig, class_counts: dict[str, int]) -> nn.Module:
    """Cross-entropy, optionally class-weighted: ``balanced`` weights are N / (K n_c) (sklearn's
    "balanced"); ``sqrt`` uses their square root, which helps rare classes without letting a
    class of 15 images dominate the gradient (plain inverse frequency collapses predictions
    onto it on the course data). Weights are normalised to mean 1 over the present classes."""
    weight = None
    if t.class_weighting != "none":
        counts = torch.tensor([max(class_counts[c], 1) for c in CANONICAL_CLASSES], dtype=torch.float32)
        present = torch.tensor([class_counts[c] > 0 for c in CANONICAL_CLASSES], dtype=torch.float32)
        weight = present / counts
        if t.class_weighting == "sqrt":
            weight = weight.sqrt()
        weight = weight * present.sum() / weight.sum()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
    }


@dataclass
class FinalEvaluation:
    metrics: dict[str, float]
    out: EpochOutput


def finalize(
    run: RunFolder, trainer: Trainer, val_loader: DataLoader, *, label: str, wandb_run: WandbRun
) -> FinalEvaluation:
    """Evaluate best.pt on validation; write report, confusion matrices, curves, reliability."""
    from research import plots

    best = torch.load(run.best_path, map_location="cpu", weights_only=False)
    trainer.model.load_state_dict(best["model"])
    out = trainer.evaluate(val_loader, desc="final validation (best.pt)")
    preds = out.logits.argmax(1)
    names = list(CANONICAL_CLASSES)
    labels = sorted(set(out.targets.tolist()))
    report_text = M.classification_report_text(out.targets, preds, names, labels=labels)
    run.write_text("classification_report.txt", f"{label}\nbest epoch {trainer.state.best_epoch}\n\n{report_text}")
    counts, normalized = M.confusion_matrices(out.targets, preds, len(names))
    write_json(run.path / "confusion_counts.json", {"class_names": names, "counts": counts.tolist()})
    write_json(run.path / "per_class.json", M.per_class_metrics(out.targets, preds, names, labels=labels))
    run.figures.mkdir(parents=True, exist_ok=True)
    figures = {
        "figures/confusion_counts": plots.plot_confusion(counts, names, run.figures / "confusion_counts.png", normalized=False, title=f"Confusion (counts) - {label}"),
        "figures/confusion_normalized": plots.plot_confusion(normalized, names, run.figures / "confusion_normalized.png", normalized=True, title=f"Confusion (row-normalised recall) - {label}"),
        "figures/reliability": plots.plot_reliability(M.softmax(out.logits), out.targets, run.figures / "reliability.png", title=f"Reliability - {label}"),
    }
    for path in plots.plot_curves(trainer.state.history, run.figures, title_suffix=f"({label})", best_epoch=trainer.state.best_epoch):
        figures[f"figures/{path.stem}"] = path
    wandb_run.log_confusion(out.targets, preds, names)
    wandb_run.log_images(figures)
    wandb_run.log_classification_report(M.classification_report_dict(out.targets, preds, names, labels=labels))
    return FinalEvaluation({f"val/{k}": v for k, v in out.metrics.items()}, out)


def train(
    cfg: DictConfig, *, command: str | None = None, on_epoch: Callable[[dict[str, float]], bool] | None = None
) -> dict[str, Any]:
    """One training run. Returns the summary written to ``summary.json``.

    ``on_epoch(row)`` is called after every epoch with the history row; returning True
    stops the run there (the sweep runner's hyperband early termination).
    """
    seed_everything(cfg.run.seed, deterministic=cfg.train.deterministic)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)

    resume_ckpt = None
    if cfg.run.resume:
        run = RunFolder.open(cfg.run.resume)
        if not run.last_path.exists():
            raise FileNotFoundError(f"{run.last_path} not found: the run has no completed epoch to resume from")
        resume_ckpt = torch.load(run.last_path, map_location="cpu", weights_only=False)
        log.info("resuming %s from epoch %d", run.path, resume_ckpt["trainer"]["epoch"])
    else:
        parent = Path(cfg.run.dir)
        run = RunFolder(parent / (cfg.run.name or new_run_id(cfg.model.name, parent)))
        if run.path.exists() and any(run.path.iterdir()):
            raise FileExistsError(f"run folder {run.path} exists; choose another run.name or resume it with run.resume={run.path}")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_text("config.yaml", to_yaml(cfg))

    model = build_model(cfg)
    mean, std = normalization(cfg, model)
    bundle = load_datasets(
        cfg.data.root, bad_files=cfg.data.bad_files, cache=cfg.data.cache, keep_size=cfg.data.image_size,
        require_all_classes=cfg.data.require_all_classes, workers=max(2, cfg.data.num_workers),
        demo_scale=cfg.data.demo_scale, seed=cfg.run.seed,
    )
    label = "synthetic demo data" if bundle.synthetic else bundle.name
    bundle.train.transform = build_train_transform(
        cfg.data.image_size, channels=cfg.data.channels, mean=mean, std=std, augment=augment_params(cfg), seed=cfg.run.seed
    )
    bundle.val.transform = eval_transform_from_config(cfg, mean, std)
    train_loader, val_loader = build_loaders(bundle, cfg, seed=cfg.run.seed)

    optimizer = build_optimizer(model, cfg.optim)
    scheduler, interval = build_scheduler(
        optimizer, cfg.optim, epochs=cfg.train.epochs, steps_per_epoch=len(train_loader), monitor=cfg.train.monitor
    )
    wandb_run = WandbRun(
        run_id=run.run_id, run_dir=run.path, config=flatten(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project,
        entity=cfg.wandb.entity, group=cfg.wandb.group, tags=[*cfg.wandb.tags, cfg.model.name, label],
        wandb_dir=cfg.wandb.dir, resume=resume_ckpt is not None,
    )
    checkpoint_meta = {
        "config": OmegaConf.to_container(cfg), "class_names": list(CANONICAL_CLASSES), "model_name": cfg.model.name,
        "mean": list(mean), "std": list(std), "pretrained_source": model.pretrained_source,
    }

    def save(name: str, state: dict[str, Any]) -> None:
        run.save_checkpoint(run.path / f"{name}.pt", {**state, **checkpoint_meta})

    def on_epoch_end(row: dict[str, float], _: EpochOutput) -> bool:
        run.write_history(trainer.state.history)
        wandb_run.log_epoch(row)
        return bool(on_epoch(row)) if on_epoch is not None else False

    trainer = Trainer(
        model, optimizer=optimizer, loss_fn=build_loss(cfg.train, bundle.train.class_counts), device=device,
        epochs=cfg.train.epochs, scheduler=scheduler, scheduler_interval=interval, grad_clip=cfg.train.grad_clip,
        amp=cfg.train.amp, channels_last=cfg.train.channels_last, monitor=cfg.train.monitor,
        patience=cfg.train.early_stopping_patience, unfreeze_epoch=cfg.model.unfreeze_epoch if cfg.model.mode == "frozen" else 0,
        seed=cfg.run.seed, checkpoint_fn=save, on_epoch_end=on_epoch_end,
    )
    if resume_ckpt is not None:
        trainer.load_checkpoint(resume_ckpt)
    total, trainable = count_parameters(model)
    log.info(
        "run %s: %s (%s, %.2f M params, %.2f M trainable) on %s, %s, %d train / %d val images",
        run.run_id, cfg.model.name, model.pretrained_source, total / 1e6, trainable / 1e6, device, label,
        len(bundle.train), len(bundle.val),
    )
    summary: dict[str, Any] = {
        "run_id": run.run_id, "status": "running", "model": cfg.model.name,
        "dataset": {
            "root": bundle.root, "name": label, "synthetic": bundle.synthetic, "train_images": len(bundle.train),
            "val_images": len(bundle.val), "class_counts": bundle.class_counts,
            "skipped_files": [str(p) for p, _ in bundle.skipped],
        },
        "pretrained": model.pretrained_source, "mode": cfg.model.mode, "class_names": list(CANONICAL_CLASSES),
        "params_total": total, "params_trainable": trainable, "seed": cfg.run.seed, "git_commit": git_commit(),
        "command": command or " ".join(sys.argv), "created": datetime.now().isoformat(timespec="seconds"),
        "env": environment(device), "image_size": cfg.data.image_size, "channels": cfg.data.channels,
        "epochs_planned": cfg.train.epochs,
    }
    start = time.perf_counter()
    try:
        trainer.fit(train_loader, val_loader)
    except KeyboardInterrupt:
        summary.update(status="interrupted", epochs_run=trainer.state.epoch)
        run.write_summary(summary)
        wandb_run.finish(exit_code=130)
        log.warning("interrupted after %d completed epoch(s); last.pt holds them. Resume: poetry run train run.resume=%s", trainer.state.epoch, run.path)
        raise
    except Exception:
        summary.update(status="failed", epochs_run=trainer.state.epoch)
        run.write_summary(summary)
        wandb_run.finish(exit_code=1)
        raise
    final = finalize(run, trainer, val_loader, label=label, wandb_run=wandb_run)
    state = trainer.state
    best_row = next(r for r in state.history if r["epoch"] == state.best_epoch)
    last_row = state.history[-1]
    summary.update(
        status="finished", best_epoch=state.best_epoch,
        stopped_early_by={"callback": "sweep", "early_stopping": "early_stopping"}.get(state.stopped_by or ""), epochs_run=state.epoch, monitor=cfg.train.monitor,
        best={k: final.metrics.get(k, best_row.get(k)) for k in SUMMARY_METRICS},
        final={k: last_row.get(k) for k in SUMMARY_METRICS if k in last_row},
        train_seconds=round(state.train_seconds, 3),
        train_images_per_s=round(state.train_images / max(state.train_seconds, 1e-9), 2),
        latency_ms_per_image=round(measure_latency(trainer.model, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)), 3),
        wall_seconds=round(time.perf_counter() - start, 3),
        wandb={"mode": wandb_run.mode, "offline_dir": wandb_run.offline_dir, "project": cfg.wandb.project},
    )
    run.write_summary(summary)

    if cfg.run.new_images:
        from research.predict import predict_folder

        predict_folder(run, cfg.run.new_images, face="both", wandb_run=wandb_run)

    wandb_run.update_summary(
        {
            "best_epoch": state.best_epoch, "params_total": total, "params_trainable": trainable,
            "pretrained": model.pretrained_source, "dataset/name": label, "dataset/synthetic": bundle.synthetic,
            "train_seconds": summary["train_seconds"], "train_images_per_s": summary["train_images_per_s"],
            "latency_ms_per_image": summary["latency_ms_per_image"],
            **{f"best/{k}": v for k, v in summary["best"].items()},
        }
    )
    if cfg.wandb.log_model:
        wandb_run.log_model(run.best_path, name=f"model-{run.run_id}", metadata={"model": cfg.model.name, **summary["best"]})
    wandb_run.finish()
    log.info(
        "finished %s: best epoch %d  val acc %.3f  top2 %.3f  macro-F1 %.3f  (%s)",
        run.path, state.best_epoch, summary["best"]["val/acc"], summary["best"]["val/top2"],
        summary["best"]["val/macro_f1"], label,
    )
    summary["run_dir"] = str(run.path)
    return summary


@dataclass
class LoadedRun:
    """A trained model ready for inference, with the run's own eval transform."""

    run: RunFolder
    model: FERClassifier
    transform: Any
    cfg: DictConfig
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device


def load_run(path: str | Path, *, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from its checkpoint and its eval transform from its config."""
    from research.config import load_saved_config

    run = RunFolder.open(path)
    ckpt_path = run.path / f"{which}.pt"
    if not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path} not found: the run did not finish an epoch (see {run.summary_path})")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = load_saved_config(run.config_path)
    model = create_model(ckpt["model_name"], len(ckpt["class_names"]), pretrained=False, in_chans=cfg.data.channels, dropout=cfg.model.dropout)
    model.load_state_dict(ckpt["model"])
    dev = resolve_device(device)
    model.to(dev).eval()
    mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    return LoadedRun(run, model, eval_transform_from_config(cfg, mean, std), cfg, list(ckpt["class_names"]), mean, std, dev)


def predict_arrays(loaded: LoadedRun, images: list[np.ndarray], *, batch_size: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """Class probabilities (N, C) and the preprocessed inputs (N, C, H, W) for HxWx3 uint8 images."""
    tensors = torch.stack([loaded.transform(image=img)["image"] for img in images])
    probs = []
    with torch.inference_mode():
        for start in range(0, len(tensors), batch_size):
            logits = loaded.model(tensors[start : start + batch_size].to(loaded.device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(probs).numpy(), tensors


def face_cropper(cfg: DictConfig, *, fallback: bool | None = None):
    """The Haar cropper of a run's ``faces`` settings (``fallback`` overrides the config's)."""
    from research.faces import HaarFaceCropper

    f = cfg.faces
    return HaarFaceCropper(
        scale_factor=f.scale_factor, min_neighbors=f.min_neighbors, min_size=f.min_size, margin=f.margin,
        pad=f.pad, upscale_to=f.upscale_to, fallback=f.fallback if fallback is None else fallback,
    )


def linked_wandb_run(loaded: LoadedRun, *, job_type: str, name: str, mode: str | None, extra_config: dict[str, Any] | None = None) -> WandbRun:
    """A W&B run for work done with a trained run (predict, evaluate), grouped with it."""
    w = loaded.cfg.wandb
    return WandbRun(
        run_id=f"{loaded.run.run_id}-{name}", run_dir=loaded.run.path,
        config={**flatten(loaded.cfg), "source_run": loaded.run.run_id, **(extra_config or {})},
        mode=mode or w.mode, project=w.project, entity=w.entity, group=w.group or loaded.run.run_id,
        tags=[*w.tags, job_type], job_type=job_type, wandb_dir=w.dir, resume=True,
    )
