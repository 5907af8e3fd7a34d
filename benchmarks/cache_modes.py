"""Image cache modes on a folder bigger than the cache budget: memory vs mmap vs stream.

Writes ``--n`` small random PNGs (``--size`` px, ``cv2.imwrite``) in the course layout
(80 % train, 20 % validation, 7 class folders) unless the folder already holds them, then,
for each mode, in a fresh child process (so one mode's memory does not count against the next):

- builds the datasets with ``load_datasets(folder, cache=MODE, keep_size=--size,
  cache_budget_mb=--budget-mb)`` (scan + decode-and-check of every file, timed);
- runs ``--rounds`` full passes over the train DataLoader (``--batch-size``, ``--workers``,
  shuffled, the train transform of ``train.py`` at ``image_size=--size``), images/s per pass;
- reports the peak anonymous memory (RssAnon, sampled every 2 ms) above the level measured
  after the imports, and the same for ``ru_maxrss``, which also counts file pages mapped by
  mmap (the kernel can drop those under memory pressure, so they are reported, not budgeted).

Prints a markdown table; ``--json OUT`` writes every figure. ``run_modes`` is what the slow
test calls with a small ``--n``.

    .venv/bin/python benchmarks/cache_modes.py --n 100000 --folder /tmp/cache-bench --budget-mb 128
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from hostinfo import cpu_capability, cpu_model  # benchmarks/hostinfo.py, beside this script

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
MODES = ("memory", "mmap", "stream")
DONE_MARKER = ".generated"

log = logging.getLogger("cache_modes")


def generate(folder: Path, n: int, *, size: int = 24, seed: int = 0) -> Path:
    """``n`` random ``size`` px RGB PNGs in ``folder/{train,validation}/<class>/``; reused when already there."""
    import cv2

    marker = folder / DONE_MARKER
    if marker.exists() and marker.read_text().strip() == f"{n} {size} {seed}":
        return folder
    rng = np.random.default_rng(seed)
    n_train = int(n * 0.8)
    for split in ("train", "validation"):
        for name in CLASSES:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / ("train" if i < n_train else "validation") / CLASSES[i % len(CLASSES)]
        # Smooth blobs compress like faces do, unlike pure noise; a little noise keeps every image distinct.
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = cv2.resize(base, (size, size), interpolation=cv2.INTER_LINEAR)
        image = cv2.add(image, rng.integers(0, 16, image.shape, dtype=np.uint8))
        cv2.imwrite(str(target / f"{i:06d}.png"), image)
    marker.write_text(f"{n} {size} {seed}")
    return folder


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def measure(folder: Path, mode: str, *, size: int, budget_mb: int, batch_size: int, workers: int, rounds: int) -> dict:
    """One mode, in this process: build time, images/s per pass, peak memory above the start level (MiB)."""
    import torch
    from torch.utils.data import DataLoader

    from research.data.augment import resolve_augment
    from research.data.datasets import load_datasets
    from research.data.transforms import build_train_transform

    torch.set_num_threads(1)
    start_anon = _rss_anon_kib()
    start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"anon": start_anon}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _rss_anon_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    bundle = load_datasets(
        folder, cache=mode, keep_size=size, cache_budget_mb=budget_mb, workers=max(2, workers), require_all_classes=False
    )
    build_s = time.perf_counter() - t0
    bundle.train.transform = build_train_transform(
        size, channels=1, mean=(0.5,), std=(0.5,), augment=resolve_augment("light"), seed=0
    )
    loader = DataLoader(
        bundle.train, batch_size=batch_size, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        seen = sum(len(y) for _, y in loader)
        rates.append(seen / (time.perf_counter() - t0))
    stop.set()
    sampler.join()
    peak["anon"] = max(peak["anon"], _rss_anon_kib())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "stored_as": type(bundle.train.images).__name__ if bundle.train.images is not None else "files",
        "train_images": len(bundle.train),
        "val_images": len(bundle.val),
        "build_s": round(build_s, 2),
        "images_per_s": [round(r, 1) for r in rates],
        "anon_peak_mib": round((peak["anon"] - start_anon) / 1024, 1),
        "maxrss_mib": round((maxrss - start_maxrss) / 1024, 1),
    }


def run_modes(
    folder: Path, *, n: int, size: int = 24, budget_mb: int = 128, batch_size: int = 256, workers: int = 0,
    rounds: int = 3, modes: tuple[str, ...] = MODES,
) -> dict:
    """Generate (or reuse) the folder, then measure each mode in its own child process."""
    generate(folder, n, size=size)
    results = []
    for mode in modes:
        args = dict(folder=str(folder), mode=mode, size=size, budget_mb=budget_mb, batch_size=batch_size,
                    workers=workers, rounds=rounds)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        out = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, env=env, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"{mode} child failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["log"] = [line for line in out.stderr.splitlines() if "image cache:" in line]
        log.info("%s: %s", mode, {k: v for k, v in result.items() if k != "log"})
        results.append(result)
    return {
        "n": n, "size": size, "budget_mb": budget_mb, "batch_size": batch_size, "workers": workers, "rounds": rounds,
        "nproc": os.cpu_count(), "cpu": cpu_model(), "cpu_capability": cpu_capability(), "python": platform.python_version(), "results": results,
    }




def markdown(report: dict) -> str:
    lines = [
        f"{report['n']} PNGs of {report['size']} px, budget {report['budget_mb']} MiB, batch {report['batch_size']}, "
        f"num_workers={report['workers']}, {report['rounds']} passes; {report['nproc']} CPUs ({report['cpu']})",
        "",
        "| mode | stored as | build s | images/s (mean ± std) | peak RssAnon MiB | peak ru_maxrss MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        rates = r["images_per_s"]
        spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
        lines.append(
            f"| {r['mode']} | {r['stored_as']} | {r['build_s']} | {statistics.mean(rates):,.0f} ± {spread:,.0f} "
            f"| {r['anon_peak_mib']} | {r['maxrss_mib']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/cache-bench"))
    parser.add_argument("--n", type=int, default=100_000, help="number of PNGs (train + validation)")
    parser.add_argument("--size", type=int, default=24, help="image side and keep_size, pixels")
    parser.add_argument("--budget-mb", type=int, default=128, help="data.cache_budget_mb")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the train loader per mode")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.child:
        kwargs = json.loads(args.child)
        print(json.dumps(measure(Path(kwargs.pop("folder")), kwargs.pop("mode"), **kwargs)))
        return
    report = run_modes(
        args.folder, n=args.n, size=args.size, budget_mb=args.budget_mb, batch_size=args.batch_size,
        workers=args.workers, rounds=args.rounds, modes=tuple(args.modes),
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
