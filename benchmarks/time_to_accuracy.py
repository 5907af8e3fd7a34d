"""Time to accuracy: a project preset trained by ``research.train.train`` vs a plain PyTorch baseline.

Both sides train on the same images, one after the other in this process (never in parallel),
under the same wall-clock budget (``--budget-s``) and/or epoch cap (``--epochs``), and are scored
on the same validation images after every epoch:

- **project**: ``train(load_config(--preset, --overrides))`` on ``--data``, a train-only dataset
  whose validation split is carved with ``data.val_fraction=--val-fraction`` and recorded in the
  run's ``val_split.json``; ``train(..., on_epoch=...)`` records every epoch and stops the run
  once the budget is spent;
- **baseline**: torchvision ``datasets.ImageFolder`` over a temporary folder of symbolic links to
  the same train and validation files (the project's recorded split), ``Grayscale(1)``,
  ``Resize((size, size))`` (the preset's ``data.image_size``), ``RandomHorizontalFlip`` (train
  only), ``ToTensor``, ``Normalize(0.5, 0.5)``; ``DataLoader(num_workers=2)``; a small VGG-style
  CNN (3 blocks of conv-BN-ReLU x2 + max-pool, 32/64/128 channels, dropout, one linear layer);
  Adam, lr 1e-3; cross-entropy; accuracy and macro-F1 (sklearn) on the validation images.

Per epoch each side records validation accuracy and macro-F1, cumulative wall seconds and
cumulative CPU seconds, both counted from the start of that side (dataset scan and decoding
included). CPU seconds are ``time.process_time()`` of this process plus the user + system time of
its terminated child processes (``resource.getrusage(RUSAGE_CHILDREN)``): non-persistent DataLoader
workers exit and are joined at the end of every pass, so each epoch's workers are counted by the
time it is recorded. The epoch that ends past the budget stops its side; the figures "within the
budget" count only the epochs that ended within it.

Results: the markdown summary to stdout (and ``--markdown``), both curves to ``--json``; progress
goes to the log. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hostinfo import cpu_capability, cpu_model  # benchmarks/hostinfo.py, beside this script
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from research.builders.data import num_workers
from research.cli import setup_logging
from research.config import load_config
from research.data.datasets import carve_validation, find_split_dir, scan_split
from research.engine.runtime import resolve_device, usable_cpus
from research.train import train

log = logging.getLogger("benchmarks.time_to_accuracy")

SIDES = ("project", "baseline")
BASELINE_LR = 1e-3
BASELINE_WORKERS = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=(
            "example:\n"
            "  .venv/bin/python benchmarks/time_to_accuracy.py --data ../shared/data/fer2013-train --val-fraction 0.1 \\\n"
            "      --budget-s 1800 --preset scratch_cnn --overrides data.image_size=48 --json /tmp/tta.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with train/<class>/ and no validation/")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train/ (default: %(default)s)")
    parser.add_argument("--preset", default="scratch_cnn", help="project preset in research/configs/ (default: %(default)s)")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides for the project side")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget per side, seconds")
    parser.add_argument("--baseline-budget-s", type=float,
                        help="the baseline's own wall-clock budget (default: --budget-s); e.g. enough to reach --target-acc")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="stop each side at the first epoch that reaches --target-acc (time-to-target runs only)")
    parser.add_argument("--epochs", type=int, help="epoch cap per side (default: the preset's train.epochs)")
    parser.add_argument("--target-acc", type=float, default=0.6, help="validation accuracy to time (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="run.seed of the project, torch seed of the baseline (default: %(default)s)")
    parser.add_argument(
        "--order", default="project,baseline", choices=("project,baseline", "baseline,project"),
        help="which side runs first (default: %(default)s)",
    )
    parser.add_argument("--run-dir", type=Path, help="keep the project's run folder here (default: a temporary folder, deleted)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the curves and the summary to this JSON file")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="also write the markdown summary to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.budget_s is None and args.epochs is None:
        parser.error("give --budget-s, --epochs or both")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget-s must be > 0")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be between 0 and 1")
    if not 0 < args.target_acc <= 1:
        parser.error("--target-acc must be in (0, 1]")
    return args


# --- clocks and machine ------------------------------------------------------------------------
def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's terminated (joined) child processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU seconds (this process plus its joined children) since construction."""

    def __init__(self) -> None:
        self.wall0, self.own0, self.children0 = time.perf_counter(), time.process_time(), children_cpu_seconds()

    def read(self) -> dict[str, float]:
        own, children = time.process_time() - self.own0, children_cpu_seconds() - self.children0
        return {"wall_s": time.perf_counter() - self.wall0, "cpu_s": own + children, "children_cpu_s": children}


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(), "cpu_capability": cpu_capability(), "nproc": usable_cpus(), "cores": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


# --- the shared split ----------------------------------------------------------------------------
def carve_split(data: Path, fraction: float, seed: int) -> list[str]:
    """The validation files (relative to ``<data>/train``) the project carves for this fraction and seed."""
    _, val = carve_validation(scan_split(find_split_dir(data, "train"), "train"), fraction=fraction, seed=seed)
    return [str(p.relative_to(val.folder)) for p in val.paths]


def link_image_folders(data: Path, val_files: Sequence[str], dest: Path) -> dict[str, Path]:
    """``dest/train`` and ``dest/validation``: ImageFolder trees of symbolic links to the project's split.

    Every class folder exists in both trees, so both datasets get the same class indices.
    """
    train_dir = find_split_dir(data, "train")
    scan = scan_split(train_dir, "train")
    wanted = set(val_files)
    relative = [p.relative_to(train_dir) for p in scan.paths]
    missing = wanted - {str(r) for r in relative}
    if missing:
        raise FileNotFoundError(f"{len(missing)} validation file(s) of the split are not in {train_dir}, e.g. {sorted(missing)[:3]}")
    folders = {split: dest / split for split in ("train", "validation")}
    for class_dir in {r.parts[0] for r in relative}:
        for folder in folders.values():
            (folder / class_dir).mkdir(parents=True, exist_ok=True)
    for rel in relative:
        link = folders["validation" if str(rel) in wanted else "train"] / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((train_dir / rel).resolve())
    return folders


# --- the project side ----------------------------------------------------------------------------
def project_config(args: argparse.Namespace, run_dir: Path) -> Any:
    overrides = [
        "wandb.mode=disabled",  # before the user's overrides, which may turn it back on
        *args.overrides,
        f"data.root={args.data}",
        f"data.val_fraction={args.val_fraction}",
        f"run.seed={args.seed}",
        f"run.dir={run_dir}",
        f"run.name=tta-{args.preset}-seed{args.seed}",
    ]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    return load_config(args.preset, overrides)


def side_budget(args: argparse.Namespace, side: str) -> float | None:
    if side == "baseline" and args.baseline_budget_s is not None:
        return args.baseline_budget_s
    return args.budget_s


def over_budget(args: argparse.Namespace, wall: float, side: str, acc: float) -> bool:
    budget = side_budget(args, side)
    if args.stop_at_target and acc >= args.target_acc:
        return True
    return budget is not None and wall >= budget


def run_project(cfg: Any, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    curve: list[dict[str, float]] = []
    clock = Clock()

    def on_epoch(row: dict[str, float]) -> bool:
        clocks = clock.read()
        curve.append({
            "epoch": int(row["epoch"]), "val_acc": float(row["val/acc"]), "val_macro_f1": float(row["val/macro_f1"]),
            "train_loss": float(row["train/loss"]), **clocks,
        })
        log.info("project epoch %d: val acc %.4f, macro-F1 %.4f, %.1f s wall, %.1f s CPU",
                 row["epoch"], row["val/acc"], row["val/macro_f1"], clocks["wall_s"], clocks["cpu_s"])
        return over_budget(args, clocks["wall_s"], "project", float(row["val/acc"]))

    summary = train(cfg, command="benchmarks/time_to_accuracy.py", on_epoch=on_epoch)
    total = clock.read()  # includes train()'s final evaluation of best.pt, after the last epoch
    run_dir = Path(summary.run_dir)
    val_files = json.loads((run_dir / "val_split.json").read_text())["files"]
    return {
        "description": f"research.train.train, preset {args.preset}, overrides {args.overrides}",
        "model": cfg.model.name, "image_size": cfg.data.image_size, "batch_size": cfg.data.batch_size,
        "num_workers": num_workers(cfg.data, device=resolve_device(cfg.train.device)), "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr, "device": str(resolve_device(cfg.train.device)),
        "epochs_cap": cfg.train.epochs, "train_images": summary.dataset.train_images,
        "val_images": summary.dataset.val_images, "curve": curve,
        "total_wall_s": total["wall_s"], "total_cpu_s": total["cpu_s"], "run_dir": str(run_dir), "val_files": val_files,
    }


# --- the plain PyTorch baseline --------------------------------------------------------------------
class SmallVGG(nn.Module):
    """Three blocks of (3x3 conv, BN, ReLU) x 2 + 2x2 max-pool, 32/64/128 channels; dropout; linear.

    Input ``(B, 1, S, S)`` with ``S`` divisible by 8; output ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int, image_size: int, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (32, 64, 128):
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout / 2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * (image_size // 8) ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def baseline_transforms(size: int) -> tuple[Callable, Callable]:
    common = [transforms.Grayscale(1), transforms.Resize((size, size))]
    tail = [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]
    return (
        transforms.Compose([*common, transforms.RandomHorizontalFlip(), *tail]),
        transforms.Compose([*common, *tail]),
    )


def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device) -> tuple[float, float]:
    """Validation accuracy and macro-F1 (over all classes, as the project computes it)."""
    from sklearn.metrics import f1_score

    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(model(x.to(device)).argmax(1).cpu())
            targets.append(y)
    p, t = torch.cat(preds).numpy(), torch.cat(targets).numpy()
    f1 = f1_score(t, p, labels=list(range(num_classes)), average="macro", zero_division=0)
    return float(np.mean(p == t)), float(f1)


def run_baseline(
    args: argparse.Namespace, val_files: Sequence[str], *, image_size: int, batch_size: int, epochs: int, threads: int,
    device: torch.device,
) -> dict[str, Any]:
    if image_size % 8:
        raise ValueError(f"the baseline CNN needs an image size divisible by 8, got {image_size}")
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    # The baseline trains on the project's device (train.device: CUDA when present), as a plain PyTorch
    # user would (model and batches moved, pinned host memory); its loader keeps its two workers either way.
    pin = device.type == "cuda"
    curve: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="tta-baseline-") as tmp:
        clock = Clock()
        folders = link_image_folders(args.data, val_files, Path(tmp))
        train_tf, eval_tf = baseline_transforms(image_size)
        every_file = lambda _: True  # noqa: E731 - the link trees hold exactly the split's images
        train_set = datasets.ImageFolder(folders["train"], transform=train_tf, is_valid_file=every_file, allow_empty=True)
        val_set = datasets.ImageFolder(folders["validation"], transform=eval_tf, is_valid_file=every_file, allow_empty=True)
        generator = torch.Generator().manual_seed(args.seed)
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=BASELINE_WORKERS, generator=generator,
                                  pin_memory=pin)
        val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=BASELINE_WORKERS, pin_memory=pin)
        num_classes = len(train_set.classes)
        model = SmallVGG(num_classes, image_size).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=BASELINE_LR)
        loss_fn = nn.CrossEntropyLoss()
        log.info("baseline: %d train / %d validation images, %d classes, %d px, batch %d, on %s",
                 len(train_set), len(val_set), num_classes, image_size, batch_size, device)
        for epoch in range(1, epochs + 1):
            model.train()
            total, count = 0.0, 0
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(y), count + len(y)
            acc, f1 = evaluate(model, val_loader, num_classes, device)
            clocks = clock.read()
            curve.append({"epoch": epoch, "val_acc": acc, "val_macro_f1": f1, "train_loss": total / max(count, 1), **clocks})
            log.info("baseline epoch %d: val acc %.4f, macro-F1 %.4f, %.1f s wall, %.1f s CPU (%.1f s in workers)",
                     epoch, acc, f1, clocks["wall_s"], clocks["cpu_s"], clocks["children_cpu_s"])
            if over_budget(args, clocks["wall_s"], "baseline", acc):
                break
        end = clock.read()
    return {
        "description": "torchvision ImageFolder + SmallVGG (3x conv-conv-pool 32/64/128, dropout, linear), "
        f"Adam lr {BASELINE_LR}, cross-entropy, DataLoader(num_workers={BASELINE_WORKERS})",
        "model": "SmallVGG", "params": sum(p.numel() for p in model.parameters()), "image_size": image_size,
        "batch_size": batch_size, "num_workers": BASELINE_WORKERS, "optimizer": "adam", "lr": BASELINE_LR, "device": str(device),
        "epochs_cap": epochs, "train_images": len(train_set), "val_images": len(val_set), "curve": curve,
        "total_wall_s": end["wall_s"], "total_cpu_s": end["cpu_s"],
    }


# --- summary ---------------------------------------------------------------------------------------
def side_summary(side: dict[str, Any], budget_s: float | None, target: float) -> dict[str, Any]:
    within = [e for e in side["curve"] if budget_s is None or e["wall_s"] <= budget_s]
    reached = next((e for e in within if e["val_acc"] >= target), None)
    best = max(within, key=lambda e: e["val_acc"], default=None)
    return {
        "epochs_run": len(side["curve"]), "epochs_within_budget": len(within),
        "target_reached_epoch": reached["epoch"] if reached else None,
        "target_wall_s": reached["wall_s"] if reached else None,
        "target_cpu_s": reached["cpu_s"] if reached else None,
        "best_acc": best["val_acc"] if best else None, "best_acc_epoch": best["epoch"] if best else None,
        "best_macro_f1": max((e["val_macro_f1"] for e in within), default=None),
    }


def compare(results: dict[str, Any]) -> dict[str, Any]:
    p, b = results["summary"]["project"], results["summary"]["baseline"]
    ratio = b["target_wall_s"] / p["target_wall_s"] if p["target_wall_s"] and b["target_wall_s"] else None
    diff = b["best_acc"] - p["best_acc"] if p["best_acc"] is not None and b["best_acc"] is not None else None
    return {"wall_to_target_baseline_over_project": ratio, "best_acc_baseline_minus_project": diff}


def fmt(value: float | None, spec: str, missing: str = "not reached") -> str:
    return missing if value is None else format(value, spec)


def best_acc(summary: dict[str, Any]) -> str:
    if summary["best_acc"] is None:
        return "none"
    return f"{summary['best_acc']:.4f} ({summary['best_acc_epoch']})"


def markdown(results: dict[str, Any]) -> str:
    m, a, cmp = results["machine"], results["args"], results["comparison"]
    target = f"{100 * a['target_acc']:.0f} %"
    budget = f"a budget of {a['budget_s']:.0f} s wall" if a["budget_s"] is not None else "no wall-clock budget"
    if a.get("baseline_budget_s") is not None:
        budget += f" for the project and {a['baseline_budget_s']:.0f} s for the baseline"
    else:
        budget += " per side"
    if a.get("stop_at_target"):
        budget += f", each side stopped at {target}"
    lines = [
        f"Machine: {m['cpu']} (CPU capability {m.get('cpu_capability', '?')}), nproc {m['nproc']}, torch {m['torch']}, {results['threads']} torch thread(s), "
        f"training on {results['project'].get('device', 'cpu')} (project) and {results['baseline'].get('device', 'cpu')} (baseline); "
        f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in m['loadavg_start'])} at start, "
        f"{'/'.join(f'{x:.2f}' for x in m['loadavg_end'])} at end.",
        f"Data: {a['data']} ({results['project']['train_images']} train / {results['project']['val_images']} validation "
        f"images, the same files on both sides); {budget}; epoch cap "
        f"{results['project']['epochs_cap']}; seed {a['seed']}; order {a['order']}.",
        "",
        f"| side | what | epochs (within budget) | time to {target}: wall s | CPU s | best val acc (epoch) | best macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SIDES:
        s, d = results["summary"][name], results[name]
        lines.append(
            f"| {name} | {d['description']} | {s['epochs_run']} ({s['epochs_within_budget']}) | "
            f"{fmt(s['target_wall_s'], '.1f')} | {fmt(s['target_cpu_s'], '.1f')} | "
            f"{best_acc(s)} | {fmt(s['best_macro_f1'], '.4f', 'none')} |"
        )
    lines += [
        "",
        f"- wall time to {target}, baseline / project: "
        + fmt(cmp["wall_to_target_baseline_over_project"], ".2f", "n/a (not reached by both sides)"),
        "- best validation accuracy within the budget, baseline vs project: "
        f"{fmt(results['summary']['baseline']['best_acc'], '.4f', 'none')} vs "
        f"{fmt(results['summary']['project']['best_acc'], '.4f', 'none')}"
        + (f" ({100 * cmp['best_acc_baseline_minus_project']:+.1f} points)" if cmp["best_acc_baseline_minus_project"] is not None else ""),
        "",
        "| side | epoch | val acc | val macro-F1 | wall s | CPU s (of which child processes) |",
        "|---|---|---|---|---|---|",
    ]
    for name in SIDES:
        lines += [
            f"| {name} | {e['epoch']} | {e['val_acc']:.4f} | {e['val_macro_f1']:.4f} | {e['wall_s']:.1f} | {e['cpu_s']:.1f} ({e['children_cpu_s']:.1f}) |"
            for e in results[name]["curve"]
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    results: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    results["machine"] = machine_info()
    with tempfile.TemporaryDirectory(prefix="tta-runs-") as tmp:
        cfg = project_config(args, args.run_dir or Path(tmp))
        threads = cfg.train.threads or torch.get_num_threads()  # the same on both sides, whichever runs first
        results["threads"] = threads
        carved = carve_split(args.data, args.val_fraction, cfg.data.val_split_seed)
        for name in args.order.split(","):
            if name == "project":
                results["project"] = run_project(cfg, args, threads)
            else:  # the project's recorded split when it ran first, else the split it is about to carve
                val_files = results["project"]["val_files"] if "project" in results else carved
                results["baseline"] = run_baseline(
                    args, val_files, image_size=cfg.data.image_size, batch_size=cfg.data.batch_size,
                    epochs=cfg.train.epochs, threads=threads, device=resolve_device(cfg.train.device),
                )
    recorded = results["project"].pop("val_files")
    if sorted(recorded) != sorted(carved):
        raise RuntimeError("the project's recorded validation split differs from the baseline's; the comparison is void")
    results["split"] = {"val_files": len(recorded), "identical_on_both_sides": True}
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["summary"] = {name: side_summary(results[name], side_budget(args, name), args.target_acc) for name in SIDES}
    results["comparison"] = compare(results)
    text = markdown(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        log.info("wrote %s", args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
