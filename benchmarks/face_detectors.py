"""Detection rate and speed of the two face pipelines: the Haar cascade crop vs dlib's HOG detector
with 5-point landmark alignment, on real photo folders.

Every image is decoded once (not timed) and each pipeline crops every image once to count the faces
found. Then, ``--repeats`` times, each pipeline crops an evenly spaced subsample of
``--timing-images`` images of the set (``cropper(image)``, as ``predict`` and ``data.face_crop`` call
it: detection plus the crop or the alignment warp); the two take turns, in alternating order, round
by round, so a slow spell on the machine falls on both. Reports faces found per pipeline, how the
two agree, and images/s (median over repeats, with min-max). ``--repeats 0`` only counts faces
(no timing: it may run under ``nice`` beside other work); ``--timing-only`` skips the full count and
reports the faces found in the timed subsample (a short run for an unniced timing). Settings are the config defaults (``faces.*``), single-threaded.
Prints a markdown table on stdout and the machine on stderr. Asserts nothing.

    PYTHONPATH=. python benchmarks/face_detectors.py --repeats 5
    PYTHONPATH=. nice -n 19 python benchmarks/face_detectors.py --repeats 0          # faces found, all images
    PYTHONPATH=. python benchmarks/face_detectors.py --timing-only --timing-images 30 --repeats 3
    PYTHONPATH=. python benchmarks/face_detectors.py --set new-images=../shared/data/new-images
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2

from research.config import FacesConfig
from research.data.images import is_image_path, load_image
from research.faces.factory import haar_cropper, landmark_aligner

log = logging.getLogger("face_detectors")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_SETS = {
    "new-images": SHARED_DATA / "new-images",
    "emociones-dev validation": SHARED_DATA / "emociones-dev" / "validation",
}


def read_images(folder: Path) -> list:
    return [load_image(p) for p in sorted(folder.rglob("*")) if p.is_file() and is_image_path(p)]


def subsample(images: list, count: int) -> list:
    return images[:: max(1, len(images) // count)][:count]


def bench_set(images: list, croppers: dict, repeats: int, timing_images: int, timing_only: bool) -> dict[str, dict]:
    if timing_only:
        images = subsample(images, timing_images)
    found = {name: [bool(cropper(image).found) for image in images] for name, cropper in croppers.items()}
    images = subsample(images, timing_images)
    seconds: dict[str, list[float]] = {name: [] for name in croppers}
    names = list(croppers)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            cropper = croppers[name]
            start = time.perf_counter()
            for image in images:
                cropper(image)
            seconds[name].append(time.perf_counter() - start)
    rates = {name: sorted(len(images) / s for s in seconds[name]) for name in names}
    return {
        name: {"found": sum(found[name]), "flags": found[name],
               "speed": f"{statistics.median(rates[name]):.1f} ({rates[name][0]:.1f}-{rates[name][-1]:.1f})" if repeats else "not timed"}
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", metavar="NAME=DIR", help="a folder of images (default: new-images and the dev set's validation/)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per pipeline and set (default: %(default)s)")
    parser.add_argument("--timing-images", type=int, default=100, help="images per timed pass (default: %(default)s)")
    parser.add_argument("--timing-only", action="store_true", help="count faces on the timed images only (a short run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cv2.setNumThreads(1)
    sets = dict(s.split("=", 1) for s in args.set) if args.set else DEFAULT_SETS
    faces = vars(FacesConfig())
    croppers = {"Haar cascade": haar_cropper(faces), "dlib HOG + 5-point alignment": landmark_aligner(faces)}
    log.info("machine: %s, %s, %d CPUs, Python %s, OpenCV %s, load %s", platform.platform(), platform.processor() or "?",
             os.cpu_count(), platform.python_version(), cv2.__version__, " ".join(f"{v:.2f}" for v in os.getloadavg()))
    rows = []
    for label, folder in sets.items():
        folder = Path(folder)
        if not folder.is_dir():
            log.warning("%s: %s is absent; skipped", label, folder)
            continue
        images = read_images(folder)
        if not images:
            log.warning("%s: no images in %s; skipped", label, folder)
            continue
        timed = len(subsample(images, args.timing_images)) if args.repeats else 0
        log.info("%s: %d images from %s, %d repeats of %d timed images", label, len(images), folder, args.repeats, timed)
        result = bench_set(images, croppers, args.repeats, args.timing_images, args.timing_only)
        counted = len(result[next(iter(croppers))]["flags"])
        haar, aligned = (result[n]["flags"] for n in croppers)
        both = sum(h and a for h, a in zip(haar, aligned, strict=True))
        for name, r in result.items():
            rows.append(f"| {label} | {counted} ({timed} timed) | {name} | {r['found']} ({100 * r['found'] / counted:.0f} %) | "
                        f"{r['speed']} |")
        rows.append(f"| {label} | {counted} | agreement | both {both}, only Haar {sum(haar) - both}, "
                    f"only aligner {sum(aligned) - both}, neither {counted - sum(haar) - sum(aligned) + both} | |")
    print("| set | images counted (timed) | pipeline | faces found | images/s, median (min-max) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    log.info("load after: %.2f %.2f %.2f", *os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
