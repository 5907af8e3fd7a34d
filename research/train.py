"""``train(cfg)``: turns a validated config into components and runs one training run.

The config is read here and in :mod:`research.builders` (and the CLI) only; everything
built receives plain arguments. ``train`` returns the run's :class:`RunSummary` so the
sweep runner, the pipeline and the tests call it directly. Work done with the trained model
afterwards (scoring new images) is composed by the caller and passed in as ``after_fit``.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from research import plots
from research.builders.data import DISTRIBUTED_BALANCED, build_eval_loader, build_loaders, load_data
from research.builders.model import (
    Stats,
    build_model,
    eval_transform,
    normalization,
    restore_run_source,
    train_transform,
)
from research.builders.training import build_trainer
from research.config import ConfigError, check_inputs, flatten, to_yaml
from research.data.classes import CANONICAL_CLASSES
from research.data.datasets import DataBundle
from research.engine.distributed import Distributed
from research.engine.runtime import latency_timings, resolve_device, seed_everything, set_threads
from research.engine.trainer import EpochOutput, Trainer
from research.errors import interrupt_exit_code, interrupt_name
from research.inference.evaluation import (
    Evaluation,
    evaluate_scores,
    write_evaluation,
    write_predictions,
)
from research.inference.loaded import predict_logits
from research.models.classifier import FERClassifier, count_parameters
from research.tracking.claim import FolderClaim, check_unclaimed
from research.tracking.recorder import RunRecorder, claim_run_folder, refuse_finished
from research.tracking.runs import (
    RunFolder,
    RunFolderError,
    new_run_id,
    read_checkpoint,
)
from research.tracking.summary import (
    FAILED,
    INTERRUPTED,
    SUMMARY_METRICS,
    SYNTHETIC_DATASET,
    DatasetSummary,
    RunSummary,
)
from research.tracking.wandb_log import WandbRun

log = logging.getLogger(__name__)

AfterFit = Callable[[RunFolder, WandbRun], None]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, processes: int = 1, data_workers: int = 0) -> dict[str, Any]:
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
        # the instruction set PyTorch's CPU kernels use (AVX2, AVX512, ...): CPU timings depend on it
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # what data.num_workers resolved to: each worker draws its own augmentations, so the count is
        # part of what makes a run repeatable
        "data_workers": data_workers,
    }
    if processes > 1:
        env["processes"] = processes
    return env


def carved_val_split(cfg: DictConfig, bundle: Any) -> dict[str, Any] | None:
    if cfg.data.val_fraction <= 0 or bundle.synthetic:
        return None
    return {
        "source": "carved from train/ (stratified by class)", "fraction": cfg.data.val_fraction,
        "seed": cfg.data.val_split_seed, "images": len(bundle.val),
    }


def open_run_folder(cfg: DictConfig, distributed: Distributed | None = None) -> tuple[RunFolder, dict[str, Any] | None]:
    """The run folder and, with ``run.resume``, the checkpoint to continue from.

    A folder of the same name that holds no completed epoch (a start that failed before its
    first checkpoint) is cleared and reused when the run starts, so a retry under the same
    ``run.name`` just works. Under torchrun rank 0 chooses (and checks) the new folder and every
    rank gets its name.
    """
    if cfg.run.resume:
        run = RunFolder.open(cfg.run.resume)
        ckpt = read_checkpoint(run.last_path, summary=run.summary_path)
        log.info("resuming %s from epoch %d", run.path, ckpt["trainer"]["epoch"])
        return run, ckpt
    return RunFolder((distributed or Distributed()).on_main(lambda: new_run_path(cfg))), None


def new_run_path(cfg: DictConfig) -> Path:
    """Where a new run goes: ``run.dir/run.name`` (or a fresh id). Refused at once when a finished run or a
    running training holds it; the run claims it when it starts (:func:`claim_run_folder`)."""
    parent = Path(cfg.run.dir)
    run = RunFolder(parent / (cfg.run.name or new_run_id(cfg.model.name, parent)))
    if run.path.is_file():
        raise RunFolderError(f"{run.path} is a file, not a run folder; choose another run.name or run.dir")
    if run.path.is_dir():
        check_unclaimed(run.path)
        refuse_finished(run)
    return run.path


def evaluate_best(run: RunFolder, trainer: Trainer, val_loader: DataLoader) -> Evaluation:
    """Score best.pt on the validation loader through the one inference forward path."""
    best = read_checkpoint(run.best_path, summary=run.summary_path)
    trainer.model.load_state_dict(best["model"])
    targets: list[torch.Tensor] = []

    def inputs() -> Iterator[torch.Tensor]:
        for images, labels in val_loader:
            targets.append(labels)
            yield images

    logits = predict_logits(trainer.model, inputs(), device=trainer.device, tta=trainer.tta)
    target = torch.cat(targets)
    # The loss as the trainer's validation computes it: the run's criterion over all images at once.
    loss = trainer.epoch_loss(logits.numpy(), target.numpy())
    return evaluate_scores(logits.numpy(), target.numpy(), list(CANONICAL_CLASSES), loss=loss)


def write_final_evaluation(run: RunFolder, trainer: Trainer, val_loader: DataLoader, *, label: str, recorder: RunRecorder) -> Evaluation:
    """Evaluate best.pt on validation; write the report, confusion matrices, per-image predictions
    (val_predictions.npz, for the report's paired tests and confidence intervals), curves, reliability; log them."""
    evaluation = evaluate_best(run, trainer, val_loader)
    write_predictions(evaluation, run.val_predictions)
    figures = write_evaluation(
        evaluation, run.path, figures_dir=run.figures, label=label, header=f"best epoch {trainer.state.best_epoch}"
    )
    figures = {f"figures/{name}": path for name, path in figures.items()}
    mixed = trainer.mixup_alpha > 0 or trainer.cutmix_alpha > 0
    train_label = "train (mixup/CutMix batches)" if mixed else "train"
    for path in plots.plot_curves(trainer.state.history, run.figures, title_suffix=f"({label})",
                                  best_epoch=trainer.state.best_epoch, train_label=train_label):
        figures[f"figures/{path.stem}"] = path
    recorder.evaluation(
        targets=evaluation.targets, preds=evaluation.preds, class_names=evaluation.class_names,
        report=evaluation.report_dict, figures=figures,
    )
    return evaluation


def train(
    cfg: DictConfig,
    *,
    command: str | None = None,
    on_epoch: Callable[[dict[str, float]], bool] | None = None,
    after_fit: AfterFit | None = None,
) -> RunSummary:
    """One training run. Returns the summary written to ``summary.json``.

    ``on_epoch(row)`` is called after every epoch with the history row; returning True
    stops the run there (the sweep runner's hyperband early termination).
    ``after_fit(run, wandb_run)`` runs once the run is finished and summarised, before its
    W&B run closes (``research.pipeline.train_with_new_images`` scores new images there).

    Started by ``torchrun`` with several processes, every rank trains its shard of the data through
    DistributedDataParallel; rank 0 alone writes the run folder, talks to W&B, runs the final
    evaluation and ``after_fit``, and every rank returns rank 0's summary.
    """
    check_inputs(cfg)
    distributed = Distributed.from_env()
    if distributed.enabled and cfg.data.sampler == "balanced":
        raise ConfigError(DISTRIBUTED_BALANCED)
    seed_everything(cfg.run.seed, deterministic=cfg.train.deterministic)
    threads = set_threads(cfg.train.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    log.info("torch CPU threads: %d (train.threads=%s: %s)", threads.threads, cfg.train.threads or "auto", threads.reason)
    device = distributed.start(resolve_device(cfg.train.device))
    try:
        return _train(cfg, distributed, device, command=command, on_epoch=on_epoch, after_fit=after_fit)
    finally:
        distributed.stop()


def _train(
    cfg: DictConfig,
    distributed: Distributed,
    device: torch.device,
    *,
    command: str | None,
    on_epoch: Callable[[dict[str, float]], bool] | None,
    after_fit: AfterFit | None,
) -> RunSummary:
    """Assemble the run's components (folder, model, data, loaders, recorder, trainer), then fit."""
    run, resume_ckpt = open_run_folder(cfg, distributed)
    model = build_model(cfg)
    if resume_ckpt is not None:
        restore_run_source(model, resume_ckpt)
    mean, std = normalization(cfg, model)
    bundle = load_data(cfg, val_files=run.val_split_files())
    label = SYNTHETIC_DATASET if bundle.synthetic else bundle.name
    bundle.train.transform = train_transform(cfg, mean, std)
    bundle.val.transform = eval_transform(cfg, mean, std)
    train_loader, val_loader = build_loaders(
        bundle, cfg, seed=cfg.run.seed, rank=distributed.rank, world_size=distributed.world_size, device=device
    )
    if train_loader.num_workers:
        log.info("data loading: %d worker processes (data.num_workers=%s)", train_loader.num_workers, cfg.data.num_workers)
    # The final evaluation scores the whole validation set in one process (rank 0).
    final_loader = build_eval_loader(bundle.val, cfg, device) if distributed.enabled else val_loader
    # The folder is made (and claimed, by rank 0) only now: nothing before this point leaves anything behind.
    claims: list[FolderClaim] = []
    distributed.on_main(lambda: claims.append(claim_run_folder(run, fresh=resume_ckpt is None)))
    try:
        recorder = new_recorder(
            cfg, run, model, bundle, label=label, stats=(mean, std), device=device, distributed=distributed,
            data_workers=train_loader.num_workers, command=command, resume_ckpt=resume_ckpt,
        )
        distributed.on_main(lambda: recorder.start(to_yaml(cfg), carved_val_split(cfg, bundle), bundle.val.names))
        return _run_trainer(cfg, run, model, bundle, (train_loader, val_loader, final_loader), recorder, distributed,
                            device=device, resume_ckpt=resume_ckpt, label=label, on_epoch=on_epoch, after_fit=after_fit)
    finally:
        for claim in claims:
            claim.release()


def _run_trainer(
    cfg: DictConfig, run: RunFolder, model: FERClassifier, bundle: DataBundle,
    loaders: tuple[DataLoader, DataLoader, DataLoader], recorder: RunRecorder, distributed: Distributed, *,
    device: torch.device, resume_ckpt: dict[str, Any] | None, label: str,
    on_epoch: Callable[[dict[str, float]], bool] | None, after_fit: AfterFit | None,
) -> RunSummary:
    """Build the trainer on the started run (restored from ``resume_ckpt``) and fit it."""
    train_loader = loaders[0]

    def on_epoch_end(row: dict[str, float], _: EpochOutput) -> bool:
        """Rank 0 records the epoch and asks the callback; every rank gets its decision to stop."""

        def record() -> bool:
            recorder.epoch(trainer.state.history)
            return bool(on_epoch(row)) if on_epoch is not None else False

        return distributed.on_main(record)

    trainer = build_trainer(
        cfg, model, class_counts=bundle.train.class_counts, steps_per_epoch=len(train_loader), device=device,
        checkpoint_fn=recorder.save_checkpoint if distributed.is_main else None, on_epoch_end=on_epoch_end,
        distributed=distributed, progress=None if distributed.is_main else False,
    )
    if resume_ckpt is not None:
        trainer.load_checkpoint(resume_ckpt)
    summary = recorder.summary
    summary.env["precision"] = trainer.precision
    log.info(
        "run %s: %s (%s, %.2f M params, %.2f M trainable) on %s (%s, %s), %s, %d train / %d val images",
        run.run_id, cfg.model.name, model.pretrained_source, summary.params_total / 1e6, summary.params_trainable / 1e6,
        device, summary.env["cpu_capability"], trainer.precision, label, len(bundle.train), len(bundle.val),
    )
    return _fit(cfg, run, trainer, loaders, recorder, distributed, label=label, after_fit=after_fit)


def new_recorder(
    cfg: DictConfig, run: RunFolder, model: FERClassifier, bundle: DataBundle, *, label: str, stats: Stats,
    device: torch.device, distributed: Distributed, data_workers: int, command: str | None,
    resume_ckpt: dict[str, Any] | None,
) -> RunRecorder:
    """The run's recorder: its summary (what is known before training), its W&B run and what every
    checkpoint carries."""
    total, trainable = count_parameters(model)
    summary = RunSummary(
        run_id=run.run_id, model=cfg.model.name,
        dataset=DatasetSummary(
            root=bundle.root, name=label, synthetic=bundle.synthetic, train_images=len(bundle.train),
            val_images=len(bundle.val), class_counts=bundle.class_counts,
            skipped_files=[str(p) for p, _ in bundle.skipped], val_split=carved_val_split(cfg, bundle),
        ),
        pretrained=model.pretrained_source, mode=cfg.model.mode, class_names=list(CANONICAL_CLASSES),
        params_total=total, params_trainable=trainable, seed=cfg.run.seed, git_commit=git_commit(),
        command=command or " ".join(sys.argv), created=datetime.now().isoformat(timespec="seconds"),
        env=environment(device, distributed.world_size, data_workers), image_size=cfg.data.image_size,
        channels=cfg.data.channels, epochs_planned=cfg.train.epochs, monitor=cfg.train.monitor, run_dir=str(run.path),
    )
    wandb_run = WandbRun(
        run_id=run.run_id, run_dir=run.path, config=flatten(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project,
        entity=cfg.wandb.entity, group=cfg.wandb.group, tags=[*cfg.wandb.tags, cfg.model.name, label],
        wandb_dir=cfg.wandb.dir, resume=resume_ckpt is not None, init_timeout=cfg.wandb.init_timeout,
        history=resume_ckpt["trainer"]["history"] if resume_ckpt is not None else (),
        enabled=distributed.is_main,
    )
    mean, std = stats
    checkpoint_meta = {
        "config": OmegaConf.to_container(cfg), "class_names": list(CANONICAL_CLASSES), "model_name": cfg.model.name,
        "mean": list(mean), "std": list(std), "pretrained_source": model.pretrained_source,
    }
    return RunRecorder(run, summary, wandb_run, checkpoint_meta=checkpoint_meta, enabled=distributed.is_main)


def _fit(
    cfg: DictConfig, run: RunFolder, trainer: Trainer, loaders: tuple[DataLoader, DataLoader, DataLoader],
    recorder: RunRecorder, distributed: Distributed, *, label: str, after_fit: AfterFit | None,
) -> RunSummary:
    """Train, evaluate best.pt and conclude; an interrupted or failed run is recorded as such."""
    train_loader, val_loader, final_loader = loaders
    start = time.perf_counter()
    try:
        trainer.fit(train_loader, val_loader)
        evaluation = distributed.on_main(
            lambda: write_final_evaluation(run, trainer, final_loader, label=label, recorder=recorder)
        )
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP (research.errors.Interrupted)
        recorder.end(INTERRUPTED, epochs=trainer.state.epoch, exit_code=interrupt_exit_code(err))
        if distributed.is_main:
            log.warning("%s", interrupted_message(run, trainer.state.epoch, interrupt_name(err)))
        raise
    except BaseException as err:
        recorder.end(FAILED, epochs=trainer.state.epoch, exit_code=1, error=f"{type(err).__name__}: {err}")
        raise
    return distributed.on_main(
        lambda: _conclude(cfg, run, trainer, evaluation, recorder, label=label, start=start, after_fit=after_fit)
    )


def interrupted_message(run: RunFolder, epochs: int, how: str) -> str:
    """What an interrupted run left and how to go on: resume from last.pt, or (no epoch finished) rerun."""
    if epochs == 0:
        return (
            f"interrupted ({how}) before epoch 1 finished: no checkpoint was written, so there is nothing to "
            f"resume; rerun the same command (with run.name={run.run_id} it reuses {run.path})"
        )
    return (
        f"interrupted ({how}) after {epochs} completed epoch(s); last.pt holds them. "
        f"Resume: poetry run train run.resume={run.path}"
    )


def _conclude(
    cfg: DictConfig, run: RunFolder, trainer: Trainer, evaluation: Evaluation, recorder: RunRecorder, *,
    label: str, start: float, after_fit: AfterFit | None,
) -> RunSummary:
    """Fill in and write the summary of a finished run, run ``after_fit`` and close its W&B run (rank 0)."""
    state = trainer.state
    best_row = next(r for r in state.history if r["epoch"] == state.best_epoch)
    last_row = state.history[-1]
    summary = recorder.summary
    summary.best_epoch = state.best_epoch
    summary.stopped_early_by = {"callback": "sweep", "early_stopping": "early_stopping"}.get(state.stopped_by or "")
    summary.epochs_run = state.epoch
    summary.best = {k: evaluation.metrics.get(k.removeprefix("val/"), best_row.get(k)) for k in SUMMARY_METRICS}
    summary.final = {k: last_row.get(k) for k in SUMMARY_METRICS if k in last_row}
    summary.train_seconds = round(state.train_seconds, 3)
    summary.train_images_per_s = round(state.train_images / max(state.train_seconds, 1e-9), 2)
    timings = latency_timings(trainer.model, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
    summary.latency_ms_per_image = round(float(np.median(timings)), 3)
    # the spread of the repeated timings: the report calls one model faster only beyond it
    summary.latency_ms_quartiles = [round(float(q), 3) for q in np.percentile(timings, [25, 75])]
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.wandb = recorder.wandb.record()
    recorder.finish(log_model=cfg.wandb.log_model, model_metadata={"model": cfg.model.name, **summary.best}, after=after_fit)
    log.info(
        "finished %s: best epoch %d  val acc %.3f  top2 %.3f  macro-F1 %.3f  (%s)",
        run.path, state.best_epoch, summary.best["val/acc"], summary.best["val/top2"], summary.best["val/macro_f1"], label,
    )
    return summary
