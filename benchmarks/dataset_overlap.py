"""Near-duplicate check between two image folders: does dataset A hold images of dataset B?

    python benchmarks/dataset_overlap.py ../shared/data/emociones-dev ../shared/data/fer2013-train

Run it before pretraining on one dataset and measuring on another (``model.init_from``): FER
collections are often assembled from the same web crawls, and a validation image the source run
trained on would flatter the fine-tuned model. Every image (``.jpg .jpeg .png .bmp .webp``, found
recursively) is read as grayscale, resized to ``--size`` pixels square (48: FER2013's size, so a
350 px copy of a 48 px face still matches), centred and scaled to unit norm; for each image of A the
script finds the most similar image of B (normalised correlation, 1.0 = the same picture up to
brightness and contrast), also against B's mirror images. It prints, per top-level folder of A
(``train``, ``validation``...), the quantiles of that best correlation and how many images reach
``--threshold``, then the closest pairs. Re-encoded or resized copies score about 0.98-1.0;
different photos of similar faces rarely pass 0.95. A crop of a photo at another framing is not
caught as it is: ``--crop-faces`` first crops A's images to their largest Haar-cascade face (the
package's ``HaarFaceCropper``, no margin; images without a face stay whole), which is how FER2013's
48 px faces were cut from web photos, so a dataset of whole photos can be checked against it too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from research.data.images import ImageDecodeError, load_image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
log = logging.getLogger("dataset_overlap")


def image_paths(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def vectors(paths: list[Path], size: int, desc: str, crop=None) -> np.ndarray:
    """One centred, unit-norm row per image (a constant image stays all zeros); ``crop(rgb) -> rgb`` first."""
    out = np.zeros((len(paths), size * size), dtype=np.float32)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=None)):
        rgb = load_image(path)  # as training reads it: EXIF orientation applied, alpha flattened
        img = Image.fromarray(crop(rgb) if crop is not None else rgb).convert("L")
        out[i] = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
    out -= out.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 1e-6)


def best_matches(a: np.ndarray, b: np.ndarray, size: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the highest correlation with a row of ``b`` or of its mirror, and that row."""
    mirrored = b.reshape(-1, size, size)[:, :, ::-1].reshape(len(b), -1)
    both = np.concatenate([b, mirrored])
    score = np.empty(len(a), dtype=np.float32)
    index = np.empty(len(a), dtype=np.int64)
    for start in range(0, len(a), block):
        sims = a[start : start + block] @ both.T
        index[start : start + block] = sims.argmax(axis=1) % len(b)
        score[start : start + block] = sims.max(axis=1)
    return score, index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the dataset measured on (e.g. the fine-tuning data)")
    parser.add_argument("b", type=Path, help="the dataset trained on first (e.g. FER2013)")
    parser.add_argument("--size", type=int, default=48, help="side of the compared thumbnails in pixels (default 48)")
    parser.add_argument("--threshold", type=float, default=0.98, help="correlation that counts as a copy (default 0.98)")
    parser.add_argument("--show", type=int, default=10, help="closest pairs to list (default 10)")
    parser.add_argument("--crop-faces", action="store_true",
                        help="compare A's largest Haar-cascade face (no margin) instead of A's whole images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.size < 8:
        log.error("--size %d is too small to tell images apart; use 8 or more (48 is FER2013's size)", args.size)
        return 2
    for root in (args.a, args.b):
        if not root.is_dir():
            log.error("%s is not a folder of images; pass two dataset folders", root)
            return 2
    paths_a, paths_b = image_paths(args.a), image_paths(args.b)
    for root, paths in ((args.a, paths_a), (args.b, paths_b)):
        if not paths:
            log.error("%s holds no images (%s)", root, " ".join(sorted(EXTENSIONS)))
            return 2
    crop = None
    if args.crop_faces:
        from research.faces.haar import HaarFaceCropper

        cropper = HaarFaceCropper(margin=0.0, fallback=True)
        crop = lambda rgb: cropper(rgb).image  # noqa: E731
    try:
        score, index = best_matches(vectors(paths_a, args.size, args.a.name, crop),
                                    vectors(paths_b, args.size, args.b.name), args.size)
    except ImageDecodeError as err:
        log.error("%s; remove or replace the file and run again", err)
        return 2
    what = "largest Haar face of each image" if args.crop_faces else "whole images"
    print(f"{args.a} ({len(paths_a)} images, {what}) against {args.b} ({len(paths_b)} images and their mirrors), "
          f"{args.size} px grayscale, best normalised correlation per image of {args.a.name}:\n")
    print(f"| part of {args.a.name} | images | median | 90 % | 99 % | max | >= {args.threshold:g} |")
    print("|---|---|---|---|---|---|---|")
    parts = np.array([p.relative_to(args.a).parts[0] if len(p.relative_to(args.a).parts) > 1 else "." for p in paths_a])
    for part in sorted(set(parts)):
        s = score[parts == part]
        q = np.quantile(s, [0.5, 0.9, 0.99])
        print(f"| {part} | {len(s)} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | {s.max():.3f} | {int((s >= args.threshold).sum())} |")
    print(f"\nclosest pairs (correlation, {args.a.name} image, {args.b.name} image):")
    for i in np.argsort(-score)[: args.show]:
        print(f"  {score[i]:.3f}  {paths_a[i].relative_to(args.a)}  {paths_b[index[i]].relative_to(args.b)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
