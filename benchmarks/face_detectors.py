"""Detection rate and speed of the two face pipelines: the Haar cascade crop vs dlib's HOG detector
with 5-point landmark alignment, on real photo folders.

Every image is decoded once (not timed). Then, ``--repeats`` times, each pipeline crops every image
of a set (``cropper(image)``, as ``predict`` and ``data.face_crop`` call it: detection plus the crop
or the alignment warp); the two take turns, in alternating order, round by round, so a slow spell on
the machine falls on both. Reports faces found per pipeline, how the two agree, and images/s
(median over repeats, with min-max). Settings are the config defaults (``faces.*``), single-threaded.
Prints a markdown table on stdout and the machine on stderr. Asserts nothing.

    PYTHONPATH=. python benchmarks/face_detectors.py --repeats 5
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

from research.builders import haar_cropper, landmark_aligner
from research.config import FacesConfig
from research.data.images import is_image_path, load_image

log = logging.getLogger("face_detectors")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_SETS = {
    "new-images": SHARED_DATA / "new-images",
    "emociones-dev validation": SHARED_DATA / "emociones-dev" / "validation",
}


def read_images(folder: Path) -> list:
    return [load_image(p) for p in sorted(folder.rglob("*")) if p.is_file() and is_image_path(p)]


def bench_set(images: list, croppers: dict, repeats: int) -> dict[str, dict]:
    found = {name: [bool(cropper(image).found) for image in images] for name, cropper in croppers.items()}
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
        name: {"found": sum(found[name]), "rate": statistics.median(rates[name]), "min": rates[name][0], "max": rates[name][-1],
               "flags": found[name]}
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", metavar="NAME=DIR", help="a folder of images (default: new-images and the dev set's validation/)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per pipeline and set (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cv2.setNumThreads(1)
    sets = dict(s.split("=", 1) for s in args.set) if args.set else DEFAULT_SETS
    faces = vars(FacesConfig())
    croppers = {"Haar cascade": haar_cropper(faces), "dlib HOG + 5-point alignment": landmark_aligner(faces)}
    log.info("machine: %s, %s, %d CPUs, Python %s, OpenCV %s, load %s", platform.platform(), platform.processor() or "?",
             os.cpu_count(), platform.python_version(), cv2.__version__, "%.2f %.2f %.2f" % os.getloadavg())
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
        log.info("%s: %d images from %s, %d repeats", label, len(images), folder, args.repeats)
        result = bench_set(images, croppers, args.repeats)
        haar, aligned = (result[n]["flags"] for n in croppers)
        both = sum(h and a for h, a in zip(haar, aligned, strict=True))
        for name, r in result.items():
            rows.append(f"| {label} | {len(images)} | {name} | {r['found']} ({100 * r['found'] / len(images):.0f} %) | "
                        f"{r['rate']:.1f} ({r['min']:.1f}-{r['max']:.1f}) |")
        rows.append(f"| {label} | {len(images)} | agreement | both {both}, only Haar {sum(haar) - both}, "
                    f"only aligner {sum(aligned) - both}, neither {len(images) - sum(haar) - sum(aligned) + both} | |")
    print("| set | images | pipeline | faces found | images/s, median (min-max) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    log.info("load after: %.2f %.2f %.2f", *os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
