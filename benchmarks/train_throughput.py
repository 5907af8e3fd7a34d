"""Training-throughput benchmarks: Trainer vs a bare PyTorch loop, and decode-once cache vs decoding every epoch.

1. **Trainer overhead.** The same model architecture and initial weights, the same
   DataLoader (dataset, train transform, batch size, ``num_workers=0``), the same torch
   threads, optimiser and loss are trained by

   a. ``Trainer.train_one_epoch``, built the way ``research/train.py`` builds it (scheduler
      included; checkpoint and W&B callbacks left out because they run per epoch in ``fit``,
      outside ``train_one_epoch``), timed from the call to its return, so the epoch-end metric
      computation counts; and
   b. a bare loop: ``opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()``.

   Blocks of ``--epochs`` full epochs alternate A B, B A, A B ... for ``--repeats`` rounds so
   background load and thermal drift hit both sides alike; the result is the median images/s
   of each side and their ratio trainer/bare (target: >= 0.95).

2. **Decode-once cache.** ``load_datasets(cache=True)`` keeps every decoded image (shrunk to
   the training size) in memory; ``cache=False`` decodes it from disk on every access. For
   each: the one-off build time (scan + decode/verify every file of both splits) and one full
   pass over the train DataLoader with the deterministic eval transform, interleaved.

Results go to stdout as a markdown table (and to ``--json``); progress goes to the log.
Numbers only describe the machine they were measured on; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.nn.functional as F
from hostinfo import cpu_capability, cpu_model  # benchmarks/hostinfo.py, beside this script
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from research.builders.data import build_loaders, load_data, num_workers
from research.builders.model import build_model, eval_transform, normalization, train_transform
from research.builders.training import build_optimizer, build_trainer, optim_for
from research.cli import setup_logging
from research.config import list_presets, load_config
from research.data.datasets import DEMO_ROOT, load_datasets
from research.data.demo import write_demo_dataset
from research.engine.runtime import resolve_device, seed_everything
from research.engine.trainer import Trainer

log = logging.getLogger("benchmarks.train_throughput")

DEMO_FILES_SIZE = 128  # side in pixels of the demo PNGs written for the cache benchmark
TARGET_RATIO = 0.95


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=(
            "benchmarks:\n"
            "  trainer-vs-bare  Trainer.train_one_epoch vs a bare PyTorch loop: same model, initial weights,\n"
            "                   DataLoader, threads, optimiser and loss; images/s over full epochs, ratio.\n"
            "  cache            load_datasets(cache=True) vs cache=False on image files: build time and\n"
            "                   images/s of one pass over the train loader (eval transform).\n\n"
            "examples:\n"
            "  .venv/bin/python benchmarks/train_throughput.py --threads 1\n"
            "  .venv/bin/python benchmarks/train_throughput.py --data-root ../shared/data/emociones-dev "
            "--threads 1 --json /tmp/bench.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-root",
        default=DEMO_ROOT,
        help="dataset folder (train/ and validation/ class folders) or 'demo': the in-memory synthetic set "
        f"for the trainer benchmark and, for the cache benchmark, the demo set written as {DEMO_FILES_SIZE}px "
        "PNGs to a temporary folder (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default="scratch_cnn",
        help="registry model name; its preset research/configs/<model>.yaml is used when one exists (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="model input side in pixels (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads for both sides (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="timed epochs per method per repeat (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=5,
        help="untimed training steps per method before timing (allocator, kernels) (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved rounds (A B, B A, A B, ...); medians are over these (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        choices=("all", "trainer", "cache"),
        default="all",
        help="which benchmark(s) to run (default: %(default)s)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="OUT", help="also write every measurement to this JSON file"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "threads", "epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_batches < 0:
        parser.error("--warmup-batches must be >= 0")
    return args


def machine_info(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_model(), "cpu_capability": cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cv2_threads": cv2.getNumThreads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def build_config(args: argparse.Namespace, epochs_total: int) -> DictConfig:
    """The model's preset plus the benchmark's settings; ``train.epochs`` sizes the LR schedule only."""
    preset = args.model if args.model in list_presets() else None
    overrides = [
        f"data.root={args.data_root}",
        f"model.name={args.model}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        f"train.threads={args.threads}",
        f"train.epochs={epochs_total}",
        "wandb.mode=disabled",
    ]
    return load_config(preset, overrides)


def summarise(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def interleaved(repeats: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Call each side once per round, reversing the order every other round; returns each side's results."""
    names = list(sides)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            gc.collect()
            results[name].append(sides[name]())
            log.info("round %d/%d  %-8s %.1f", round_ + 1, repeats, name, results[name][-1])
    return results


# --- 1. Trainer vs bare loop -----------------------------------------------------------------
def bench_trainer(cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(cfg.run.seed, deterministic=cfg.train.deterministic)
    torch.set_num_threads(args.threads)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg)
    bare_model = copy.deepcopy(model).to(device)  # same initial weights, trained independently
    mean, std = normalization(cfg, model)
    bundle = load_data(cfg)
    bundle.train.transform = train_transform(cfg, mean, std)
    loader, _ = build_loaders(bundle, cfg, seed=cfg.run.seed)
    n_images = len(bundle.train)
    # The trainer train.py builds (the same builder), without checkpoints or epoch callbacks.
    trainer = build_trainer(cfg, model, class_counts=bundle.train.class_counts, steps_per_epoch=len(loader), device=device)
    loss_fn = trainer.loss_fn
    bare_optimizer = build_optimizer(bare_model, optim_for(cfg, model))
    # The functional loss with the trainer's class weights and smoothing: the same objective.
    weight = loss_fn.weight.to(device) if loss_fn.weight is not None else None
    smoothing = loss_fn.label_smoothing

    # The trainer's precision and memory format (bf16 autocast and channels-last on CPU and CUDA by
    # default): the comparison is about the trainer's bookkeeping, not about those levers.
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    bare_model.to(memory_format=memory_format)

    def bare_step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device, non_blocking=True).contiguous(memory_format=memory_format), y.to(device, non_blocking=True)
        bare_optimizer.zero_grad()
        with torch.autocast(device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            logits = bare_model(x)
        loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=smoothing)
        loss.backward()
        bare_optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def warm_up(step: Callable[[torch.Tensor, torch.Tensor], Any], module: nn.Module) -> None:
        module.train()
        for i, (x, y) in enumerate(loader):
            if i >= args.warmup_batches:
                break
            step(x, y)
        sync()

    warm_up(lambda x, y: trainer.step(x, y, train=True), trainer.model)
    warm_up(bare_step, bare_model)

    epoch_end_seconds: list[float] = []

    def run_trainer() -> float:
        start = time.perf_counter()
        for _ in range(args.epochs):
            before = time.perf_counter()
            out = trainer.train_one_epoch(loader)
            sync()
            # EpochOutput.seconds stops before torch.cat + compute_metrics; the rest is the epoch-end cost.
            epoch_end_seconds.append(time.perf_counter() - before - out.seconds)
        return n_images * args.epochs / (time.perf_counter() - start)

    def run_bare() -> float:
        start = time.perf_counter()
        for _ in range(args.epochs):
            bare_model.train()
            for x, y in loader:
                bare_step(x, y)
            sync()
        return n_images * args.epochs / (time.perf_counter() - start)

    def run_loader() -> float:
        start = time.perf_counter()
        for _ in loader:
            pass
        return n_images / (time.perf_counter() - start)

    log.info(
        "trainer vs bare: %s, %d train images, batch %d, %d batches/epoch, %d epoch(s) x %d repeats each, %d thread(s), "
        "trainer progress bar %s",
        args.model,
        n_images,
        cfg.data.batch_size,
        len(loader),
        args.epochs,
        args.repeats,
        torch.get_num_threads(),
        "on" if trainer.progress else "off",
    )
    results = interleaved(args.repeats, {"trainer": run_trainer, "bare": run_bare})
    loader_only = interleaved(1, {"loader": run_loader})["loader"]
    trainer_ips = statistics.median(results["trainer"])
    bare_ips = statistics.median(results["bare"])
    images, targets = next(iter(loader))
    extras = per_batch_extras(trainer, images, targets)
    bare_batch_us = n_images / bare_ips / len(loader) * 1e6
    extras_us = sum(v for k, v in extras.items() if not k.startswith("("))
    epoch_end = statistics.median(epoch_end_seconds)
    return {
        "model": args.model,
        "preset": args.model if args.model in list_presets() else None,
        "dataset": bundle.name,
        "synthetic": bundle.synthetic,
        "train_images": n_images,
        "batch_size": cfg.data.batch_size,
        "batches_per_epoch": len(loader),
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "augment": cfg.augment.preset,
        "optimizer": type(trainer.optimizer).__name__,
        "scheduler": type(trainer.scheduler).__name__ if trainer.scheduler is not None else None,
        "device": str(device),
        "epochs_per_repeat": args.epochs,
        "repeats": args.repeats,
        "warmup_batches": args.warmup_batches,
        "trainer_progress_bar": trainer.progress,
        "trainer_images_per_s": summarise(results["trainer"]),
        "bare_images_per_s": summarise(results["bare"]),
        "ratio": trainer_ips / bare_ips,
        "ratio_per_round": [
            t / b for t, b in zip(results["trainer"], results["bare"], strict=True)
        ],
        "trainer_epoch_end_seconds": summarise(epoch_end_seconds),
        "per_batch_extras_us": extras,
        "per_batch_extras_total_us": extras_us,
        "bare_batch_us": bare_batch_us,
        "extras_share": (extras_us * len(loader) + epoch_end * 1e6) / (bare_batch_us * len(loader)),
        "loader_only_images_per_s": loader_only[0],
    }


def per_batch_extras(
    trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, number: int = 2000
) -> dict[str, float]:
    """Microseconds per batch of each statement ``Trainer.step``/``run_epoch`` runs beyond the bare loop.

    Timed in isolation on one real batch's loss and logits; the forward, backward, zero_grad
    and optimiser step that both sides share are left out. Call after the timed epochs: the
    scheduler steps ``number`` more times (its learning rate, not its cost, changes).
    """
    device = trainer.device
    with torch.no_grad():
        logits = trainer.model(images.to(device))
        loss = trainer.loss_fn(logits.float(), targets.to(device))
    store: list[torch.Tensor] = []

    def autocast_context() -> None:
        with torch.autocast(
            device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None
        ):
            pass

    def progress_bar_on() -> None:
        with open(os.devnull, "w") as sink:
            bar = tqdm(range(100), file=sink, leave=False)
            for _ in bar:
                bar.set_postfix(loss=f"{1.0:.3f}")

    statements: dict[str, Callable[[], Any]] = {
        "images/targets .to(device)": lambda: (
            images.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        ),
        "autocast context": autocast_context,
        "logits.float() for the loss": lambda: logits.float(),
        "isfinite(loss) check": lambda: bool(torch.isfinite(loss)),
        "GradScaler scale + update (disabled off CUDA)": lambda: (
            trainer.scaler.scale(loss),
            trainer.scaler.update(),
        ),
        "loss.detach(), logits.detach()": lambda: (loss.detach(), logits.detach()),
        "loss.item() (a device sync on CUDA)": lambda: loss.item(),
        "logits.float().cpu() + targets.cpu() + appends": lambda: (
            store.append(logits.float().cpu()),
            store.append(targets.cpu()),
            store.clear(),
        ),
    }
    if trainer.scheduler is not None and trainer.scheduler_interval == "step":
        statements["scheduler.step()"] = trainer.scheduler.step
    costs = {
        name: timeit.timeit(fn, number=number) / number * 1e6 for name, fn in statements.items()
    }
    costs["tqdm wrapper, bar disabled"] = (
        timeit.timeit(lambda: [None for _ in tqdm(range(100), disable=True)], number=number // 10)
        / (number // 10)
        / 100
        * 1e6
    )
    # Reported apart: interactive terminals get the bar, redirected runs (like this one) may not.
    costs["(tqdm bar + set_postfix when progress is on)"] = (
        timeit.timeit(progress_bar_on, number=20) / 20 / 100 * 1e6
    )
    return costs


# --- 2. Decode-once cache ----------------------------------------------------------------------
def bench_cache(cfg: DictConfig, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = build_model(cfg)
    mean, std = normalization(cfg, model)
    transform = eval_transform(cfg, mean, std)
    kwargs = dict(
        bad_files=cfg.data.bad_files,
        keep_size=cfg.data.image_size,
        require_all_classes=cfg.data.require_all_classes,
        workers=max(2, num_workers(cfg.data)),
    )
    # One untimed build so that every timed build reads the files from the OS page cache.
    load_datasets(folder, cache=False, **kwargs)
    bundles: dict[bool, Any] = {}

    def build(cache: bool) -> Callable[[], float]:
        def run() -> float:
            bundles.pop(cache, None)
            gc.collect()
            start = time.perf_counter()
            bundles[cache] = load_datasets(folder, cache=cache, **kwargs)
            return time.perf_counter() - start

        return run

    log.info("cache benchmark on %s: building the datasets (scan + decode both splits)", folder)
    builds = interleaved(args.repeats, {"cached": build(True), "uncached": build(False)})

    loaders = {}
    for cache, bundle in bundles.items():
        bundle.train.transform = transform
        generator = torch.Generator().manual_seed(cfg.run.seed)
        loaders[cache] = DataLoader(
            bundle.train,
            batch_size=cfg.data.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=0,
        )
    n_images = len(bundles[True].train)

    def one_pass(cache: bool) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            for _ in loaders[cache]:
                pass
            return n_images / (time.perf_counter() - start)

        return run

    log.info(
        "cache benchmark: one pass over %d train images per side and round (eval transform)",
        n_images,
    )
    passes = interleaved(args.repeats, {"cached": one_pass(True), "uncached": one_pass(False)})
    cached, uncached = statistics.median(passes["cached"]), statistics.median(passes["uncached"])
    return {
        "folder": str(folder),
        "train_images": n_images,
        "val_images": len(bundles[True].val),
        "transform": "eval (resize + pad + gray + normalize)",
        "keep_size": cfg.data.image_size,
        "decode_threads": kwargs["workers"],
        "repeats": args.repeats,
        "build_seconds": {
            "cached": summarise(builds["cached"]),
            "uncached": summarise(builds["uncached"]),
        },
        "pass_images_per_s": {
            "cached": summarise(passes["cached"]),
            "uncached": summarise(passes["uncached"]),
        },
        "speedup": cached / uncached,
    }


# --- report ------------------------------------------------------------------------------------
def spread(stats: dict[str, float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(stats['median'])} ({fmt.format(stats['min'])}-{fmt.format(stats['max'])})"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} torch thread(s), "
        f"cv2 threads {m['cv2_threads']}, Python {m['python']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end.",
        "",
    ]
    t = results.get("trainer")
    if t:
        verdict = "meets" if t["ratio"] >= TARGET_RATIO else "misses"
        lines += [
            f"Trainer vs bare loop: {t['model']} on {t['dataset']} ({t['train_images']} train images, "
            f"{t['image_size']}px x {t['channels']} ch, batch {t['batch_size']}, augment {t['augment']}, "
            f"{t['optimizer']} + {t['scheduler']}), {t['epochs_per_repeat']} epoch(s) x {t['repeats']} interleaved "
            "rounds per side; median (min-max) of the rounds.",
            "",
            "| measurement | value |",
            "|---|---|",
            f"| Trainer.train_one_epoch, images/s | {spread(t['trainer_images_per_s'])} |",
            f"| bare loop, images/s | {spread(t['bare_images_per_s'])} |",
            f"| ratio trainer/bare (median/median) | {t['ratio']:.3f} ({verdict} the >= {TARGET_RATIO} target) |",
            f"| ratio per round | {', '.join(f'{r:.3f}' for r in t['ratio_per_round'])} |",
            f"| trainer epoch-end cost (cat + metrics), s | {spread(t['trainer_epoch_end_seconds'], '{:.3f}')} |",
            f"| DataLoader alone (train transform), images/s | {t['loader_only_images_per_s']:.1f} |",
            "",
            f"What the trainer runs beyond the bare loop, timed in isolation (us per batch; one bare-loop batch took "
            f"{t['bare_batch_us'] / 1e3:.1f} ms):",
            "",
            "| per-batch extra | us |",
            "|---|---|",
            *(f"| {name} | {us:.2f} |" for name, us in t["per_batch_extras_us"].items()),
            f"| **sum per batch** (without the bracketed row) | {t['per_batch_extras_total_us']:.2f} |",
            f"| **extras + epoch-end metrics, share of a bare epoch** | {100 * t['extras_share']:.3f} % |",
            "",
        ]
    c = results.get("cache")
    if c:
        b, p = c["build_seconds"], c["pass_images_per_s"]
        lines += [
            f"Decode-once cache: {c['folder']} ({c['train_images']} train + {c['val_images']} validation files), "
            f"one pass over the train loader with the {c['transform']} transform, {c['repeats']} interleaved rounds.",
            "",
            "| measurement | cache=True | cache=False |",
            "|---|---|---|",
            f"| build (scan + decode both splits, {c['decode_threads']} threads), s | {spread(b['cached'], '{:.2f}')} "
            f"| {spread(b['uncached'], '{:.2f}')} |",
            f"| train pass, images/s | {spread(p['cached'])} | {spread(p['uncached'])} |",
            f"| speed-up of a pass (cached/uncached) | {c['speedup']:.2f}x | |",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    results: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    }
    results["machine"] = machine_info(args.threads)
    epochs_total = args.epochs * args.repeats + 1
    cfg = build_config(args, epochs_total)
    if args.only in ("all", "trainer"):
        results["trainer"] = bench_trainer(cfg, args)
    if args.only in ("all", "cache"):
        if args.data_root == DEMO_ROOT:
            with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
                folder = write_demo_dataset(
                    Path(tmp), size=DEMO_FILES_SIZE, seed=cfg.run.seed, scale=1.0
                )
                results["cache"] = bench_cache(cfg, args, folder)
                results["cache"]["folder"] = f"demo PNGs ({DEMO_FILES_SIZE}px, temporary folder)"
        else:
            results["cache"] = bench_cache(cfg, args, Path(args.data_root))
    results["machine"]["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        log.info("wrote %s", args.json)
    sys.stdout.write(markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
