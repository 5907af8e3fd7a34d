"""Is data loading the bottleneck? The model's training images/s against the loader's, per ``num_workers``.

For a preset on a dataset, on the device training would use (CUDA when present, else CPU), with
the preset's precision, memory format, mixup and optimiser, and the data pipeline ``research/train.py``
builds (decode-once cache, albumentations train transform, ``builders.build_loaders``):

1. **model**: ``Trainer.train_one_epoch`` over batches already decoded and augmented in memory
   (the first ``--model-batches`` batches of the train loader, repeated): what the device can take.
2. **loader**: one full pass over the train ``DataLoader`` per ``--workers`` value, each batch
   moved to the device as the trainer moves it: what the data side can give.
3. **epoch**: ``Trainer.train_one_epoch`` over that real loader, per ``--workers`` value: what
   training gets. On CUDA the GPU's utilisation is sampled during it (``torch.cuda.utilization``,
   which needs ``pynvml``; left out without it).

A workers count is **loader-bound** when its loader images/s are below the model's images/s.
``auto`` in ``--workers`` is ``data.num_workers=auto`` resolved on this machine. The model is
built without pretrained weights (their values do not change the speed), so no weight file is
needed. Prints a markdown table; ``--json OUT`` writes every figure. Nothing here asserts a timing.

    .venv/bin/python benchmarks/loader_throughput.py --preset efficientnet_lite0 --data ../shared/data/emociones-dev
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hostinfo import cpu_model  # benchmarks/hostinfo.py, beside this script
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from research import builders
from research.cli import setup_logging, user_errors
from research.config import load_config
from research.engine.trainer import Trainer, resolve_device

log = logging.getLogger("benchmarks.loader_throughput")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=(
            "examples:\n"
            "  .venv/bin/python benchmarks/loader_throughput.py --preset efficientnet_lite0 --data ../shared/data/emociones-dev\n"
            "  .venv/bin/python benchmarks/loader_throughput.py --preset scratch_cnn --data demo --workers 0 2 "
            "--json /tmp/loader.json data.batch_size=128"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="efficientnet_lite0", help="research/configs preset (default: %(default)s)")
    parser.add_argument("--data", default="demo", help="data.root: a dataset folder or demo (default: %(default)s)")
    parser.add_argument(
        "--workers", nargs="+", default=["0", "2", "auto"],
        help="num_workers values to measure; auto = data.num_workers=auto here (default: 0 2 auto)",
    )
    parser.add_argument("--model-batches", type=int, default=20, help="batches held in memory for the model-only pass")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. data.batch_size=128)")
    return parser.parse_args(argv)


def make_trainer(cfg: DictConfig, model: torch.nn.Module, bundle, steps_per_epoch: int, device: torch.device) -> Trainer:
    """The trainer ``research/train.py`` builds, without checkpoints, W&B or progress bars."""
    optimizer = builders.build_optimizer(model, cfg.optim)
    scheduler, interval = builders.build_scheduler(
        optimizer, cfg.optim, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch, monitor=cfg.train.monitor
    )
    return Trainer(
        model, optimizer=optimizer, loss_fn=builders.build_loss(cfg.train, bundle.train.class_counts), device=device,
        epochs=cfg.train.epochs, scheduler=scheduler, scheduler_interval=interval, grad_clip=cfg.train.grad_clip,
        amp=cfg.train.amp, channels_last=cfg.train.channels_last, ema_decay=cfg.train.ema_decay,
        mixup_alpha=cfg.train.mixup_alpha, cutmix_alpha=cfg.train.cutmix_alpha, seed=cfg.run.seed, progress=False,
    )


class UtilisationSampler:
    """GPU utilisation (percent) every 0.2 s while active; ``None`` off CUDA or without pynvml."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self.available = device.type == "cuda"
        if self.available:
            try:
                torch.cuda.utilization(device)
            except Exception:  # pynvml missing or NVML unavailable
                self.available = False

    def __enter__(self) -> UtilisationSampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    def config(*extra: str) -> DictConfig:
        return load_config(args.preset, [f"data.root={args.data}", "model.pretrained=false", *args.overrides, *extra])

    base = config()
    device = resolve_device(base.train.device)
    model = builders.build_model(base)
    mean, std = builders.normalization(base, model)
    bundle = builders.load_data(base)
    bundle.train.transform = builders.train_transform(base, mean, std)
    n_train = len(bundle.train)
    log.info("%s on %s: %d train images, %d px, batch %d", args.preset, device, n_train, base.data.image_size,
             base.data.batch_size)

    # 1. The model alone: batches decoded and augmented once, kept in memory, repeated.
    loader, _ = builders.build_loaders(bundle, config("data.num_workers=0"), seed=base.run.seed)
    held = []
    for batch in loader:
        held.append(batch)
        if len(held) >= args.model_batches:
            break
    trainer = make_trainer(base, model, bundle, len(loader), device)
    trainer.train_one_epoch(DataLoader(held[:3], batch_size=None))  # warm-up: kernels chosen, memory allocated
    sync(device)
    start = time.perf_counter()
    out = trainer.train_one_epoch(DataLoader(held, batch_size=None))
    sync(device)
    model_ips = out.images / (time.perf_counter() - start)
    log.info("model only: %.0f images/s", model_ips)

    rows = []
    for requested in args.workers:
        cfg = config(f"data.num_workers={requested}")
        workers = builders.num_workers(cfg.data)
        loader, _ = builders.build_loaders(bundle, cfg, seed=cfg.run.seed)
        # 2. The loader alone (worker start-up included: the trainer's loaders start their workers every epoch).
        start = time.perf_counter()
        seen = 0
        for images, targets in loader:
            images.to(device, non_blocking=True)
            targets.to(device, non_blocking=True)
            seen += len(targets)
        sync(device)
        loader_ips = seen / (time.perf_counter() - start)
        # 3. Training on that loader.
        with UtilisationSampler(device) as util:
            sync(device)
            start = time.perf_counter()
            out = trainer.train_one_epoch(loader)
            sync(device)
            epoch_s = time.perf_counter() - start
        row = {
            "workers_requested": requested, "workers": workers, "loader_images_per_s": loader_ips,
            "epoch_images_per_s": out.images / epoch_s, "epoch_s": epoch_s, "gpu_utilisation_pct": util.mean(),
            "loader_bound": loader_ips < model_ips,
        }
        log.info("num_workers=%s (%d): loader %.0f images/s, training %.0f images/s%s", requested, workers, loader_ips,
                 row["epoch_images_per_s"], f", GPU {util.mean():.0f} %" if util.mean() is not None else "")
        rows.append(row)
    return {
        "preset": args.preset, "data": args.data, "overrides": list(args.overrides), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(), "nproc": builders.usable_cpus(), "torch": torch.__version__,
        "python": platform.python_version(), "train_images": n_train, "image_size": base.data.image_size,
        "batch_size": base.data.batch_size, "amp": base.train.amp, "channels_last": base.train.channels_last,
        "torch_threads": torch.get_num_threads(), "model_images_per_s": model_ips, "rows": rows,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['preset']} on {report['data']} ({report['train_images']} train images, {report['image_size']} px, "
        f"batch {report['batch_size']}), {report['device']}"
        + (f" ({report['gpu']})" if report["gpu"] else "")
        + f", {report['nproc']} CPUs ({report['cpu']}), torch {report['torch']}",
        "",
        f"Model only (batches in memory): **{report['model_images_per_s']:.0f} images/s**",
        "",
        "| num_workers | loader images/s | training images/s | epoch s | GPU util. | loader-bound |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        requested = row["workers_requested"]
        label = f"{requested} ({row['workers']})" if requested == "auto" else str(row["workers"])
        util = f"{row['gpu_utilisation_pct']:.0f} %" if row["gpu_utilisation_pct"] is not None else "n/a"
        lines.append(
            f"| {label} | {row['loader_images_per_s']:.0f} | {row['epoch_images_per_s']:.0f} | {row['epoch_s']:.1f} | "
            f"{util} | {'yes' if row['loader_bound'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    for value in args.workers:
        if value != "auto" and not value.isdigit():
            log.error("--workers %r: give auto or integers >= 0", value)
            return 2
    try:
        report = measure(args)
    except user_errors() as err:
        log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
        return 2
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
