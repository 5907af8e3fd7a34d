"""Is data loading the bottleneck? The model's training images/s against the loader's, per ``num_workers``.

For a preset on a dataset, on the device training would use (CUDA when present, else CPU), with
the preset's precision, memory format, mixup and optimiser, and the data pipeline ``research/train.py``
builds (decode-once cache, albumentations train transform, ``research.builders.data.build_loaders``):

1. **model**: ``Trainer.train_one_epoch`` over batches already decoded and augmented in memory
   (the first ``--model-batches`` batches of the train loader, repeated): what the device can take.
2. **loader**: one full pass over the train ``DataLoader`` per ``--workers`` value, each batch
   moved to the device as the trainer moves it: what the data side can give.
3. **epoch**: ``Trainer.train_one_epoch`` over that real loader, per ``--workers`` value: what
   training gets. On CUDA the GPU's utilisation is sampled during it (``torch.cuda.utilization``,
   which needs ``pynvml``; left out without it).

Each of ``--repeats`` rounds measures 1, then 2 and 3 for every ``--workers`` value, in alternating
order (0 2 auto, then auto 2 0, ...); the table gives the median and the range over the rounds. A
workers count is **loader-bound** when its median loader images/s are below the model's.
``auto`` in ``--workers`` is ``data.num_workers=auto`` resolved for the run's device
(``train.device``, CUDA when present). The model is
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
from hostinfo import cpu_capability, cpu_model  # benchmarks/hostinfo.py, beside this script
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from research.builders.data import build_loaders, load_data
from research.builders.model import build_model, normalization, train_transform
from research.builders.training import build_trainer
from research.cli import setup_logging
from research.config import load_config
from research.engine.runtime import resolve_device, usable_cpus
from research.errors import UserError

log = logging.getLogger("benchmarks.loader_throughput")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


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
    parser.add_argument("--model-batches", type=positive_int, default=20,
                        help="batches held in memory for the model-only pass (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="rounds over every setting, in alternating order (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. data.batch_size=128)")
    return parser.parse_args(argv)


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
    model = build_model(base)
    mean, std = normalization(base, model)
    bundle = load_data(base)
    bundle.train.transform = train_transform(base, mean, std)
    n_train = len(bundle.train)
    log.info("%s on %s: %d train images, %d px, batch %d", args.preset, device, n_train, base.data.image_size,
             base.data.batch_size)

    # 1. The model alone: batches decoded and augmented once, kept in memory, repeated.
    loader, _ = build_loaders(bundle, config("data.num_workers=0"), seed=base.run.seed, device=device)
    held = []
    for batch in loader:
        held.append(batch)
        if len(held) >= args.model_batches:
            break
    trainer = build_trainer(base, model, class_counts=bundle.train.class_counts, steps_per_epoch=len(loader),
                                     device=device, progress=False)
    trainer.train_one_epoch(DataLoader(held[:3], batch_size=None))  # warm-up: kernels chosen, memory allocated

    def model_only() -> float:
        sync(device)
        start = time.perf_counter()
        out = trainer.train_one_epoch(DataLoader(held, batch_size=None))
        sync(device)
        return out.images / (time.perf_counter() - start)

    def one_setting(requested: str) -> dict[str, Any]:
        cfg = config(f"data.num_workers={requested}")
        loader, _ = build_loaders(bundle, cfg, seed=cfg.run.seed, device=device)
        # 2. The loader alone (worker start-up included: the trainer's loaders start their workers every epoch).
        sync(device)
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
        return {"workers": loader.num_workers, "loader": loader_ips, "training": out.images / epoch_s, "epoch_s": epoch_s,
                "gpu": util.mean()}

    # Rounds in alternating order (0 2 auto, auto 2 0, ...), so drift and background load hit every setting alike.
    model_ips: list[float] = []
    samples: dict[str, list[dict[str, Any]]] = {w: [] for w in args.workers}
    for round_ in range(args.repeats):
        model_ips.append(model_only())
        for requested in args.workers if round_ % 2 == 0 else reversed(args.workers):
            sample = one_setting(requested)
            samples[requested].append(sample)
            log.info("round %d/%d, num_workers=%s: loader %.0f images/s, training %.0f images/s (model only %.0f)%s",
                     round_ + 1, args.repeats, requested, sample["loader"], sample["training"], model_ips[-1],
                     f", GPU {sample['gpu']:.0f} %" if sample["gpu"] is not None else "")
    model_median = statistics.median(model_ips)
    rows = []
    for requested in args.workers:
        got = samples[requested]
        loader_ips, training_ips = [g["loader"] for g in got], [g["training"] for g in got]
        gpu = [g["gpu"] for g in got if g["gpu"] is not None]
        rows.append({
            "workers_requested": requested, "workers": got[0]["workers"],
            "loader_images_per_s": statistics.median(loader_ips), "loader_images_per_s_all": loader_ips,
            "epoch_images_per_s": statistics.median(training_ips), "epoch_images_per_s_all": training_ips,
            "epoch_s": statistics.median(g["epoch_s"] for g in got),
            "gpu_utilisation_pct": statistics.median(gpu) if gpu else None,
            "loader_bound": statistics.median(loader_ips) < model_median,
        })
    return {
        "preset": args.preset, "data": args.data, "overrides": list(args.overrides), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(), "cpu_capability": cpu_capability(), "nproc": usable_cpus(), "torch": torch.__version__,
        "python": platform.python_version(), "train_images": n_train, "image_size": base.data.image_size,
        "batch_size": base.data.batch_size, "amp": base.train.amp, "channels_last": base.train.channels_last,
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "model_images_per_s": model_median, "model_images_per_s_all": model_ips, "rows": rows,
    }


def spread(values: Sequence[float]) -> str:
    """median (min-max) of a list of figures, as whole numbers."""
    text = f"{statistics.median(values):,.0f}"
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}-{max(values):,.0f})"


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['preset']} on {report['data']} ({report['train_images']} train images, {report['image_size']} px, "
        f"batch {report['batch_size']}), {report['device']}"
        + (f" ({report['gpu']})" if report["gpu"] else "")
        + f", {report['nproc']} CPUs ({report['cpu']}, CPU capability {report.get('cpu_capability', '?')}), torch {report['torch']}, {report['started']}, "
        f"load average {report['loadavg_start'][0]:.2f} at the start, {report['loadavg_end'][0]:.2f} at the end",
        "",
        f"Model only (batches in memory), images/s, median (min-max) of {report['repeats']} rounds: "
        f"**{spread(report['model_images_per_s_all'])}**",
        "",
        "| num_workers | loader images/s | training images/s | epoch s | GPU util. | loader-bound |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        requested = row["workers_requested"]
        label = f"{requested} ({row['workers']})" if requested == "auto" else str(row["workers"])
        util = f"{row['gpu_utilisation_pct']:.0f} %" if row["gpu_utilisation_pct"] is not None else "n/a"
        lines.append(
            f"| {label} | {spread(row['loader_images_per_s_all'])} | {spread(row['epoch_images_per_s_all'])} | "
            f"{row['epoch_s']:.1f} | {util} | {'yes' if row['loader_bound'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    for value in args.workers:
        if value != "auto" and not value.isdigit():
            log.error("--workers %r: give auto or integers >= 0", value)
            return 2
    if args.json is not None:
        try:  # before minutes of measuring, not after
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.touch()
        except OSError as err:
            log.error("--json %s cannot be written (%s); give a writable path", args.json, err.strerror or err)
            return 2
    started, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    try:
        report = measure(args)
    except UserError as err:
        log.error("%s", err)
        return 2
    report.update(started=started, loadavg_start=list(load_start), loadavg_end=list(os.getloadavg()))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
