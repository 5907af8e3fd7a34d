"""Folder datasets in the course layout: ``<root>/train/<class>/*`` and ``<root>/validation/<class>/*``.

Every image is decoded once when the dataset is built, so a corrupt file is reported by
path before training starts instead of crashing epoch 7. The decoded images (shrunk to the
training size) are then kept in one of three places, chosen by ``cache`` against a memory
budget (:func:`choose_cache_mode`):

- ``memory``: a list of arrays; later epochs decode nothing.
- ``mmap``: a uint8 file on disk, one fixed ``keep_size x keep_size x 3`` slot per image,
  memory-mapped; the validation pass writes straight into it, and the OS page cache keeps
  what fits in memory.
- ``stream``: nothing is kept; the validation pass decodes and drops, and every access
  decodes the file again (in DataLoader workers when ``data.num_workers > 0``).

All three give the same pixels for the same index (one :func:`shrink_to`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from research.data.cache import MmapImages, MmapView, normalize_cache_mode, resolve_cache_mode
from research.data.classes import CANONICAL_CLASSES, map_folders, try_canonical_name
from research.data.images import ImageDecodeError, is_image_path, load_image, shrink_to
from research.errors import UserError
from research.faces.factory import FaceCropStep

log = logging.getLogger(__name__)

BadFilePolicy = Literal["error", "skip"]
SPLIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid", "test"),
    "test": ("test", "testing"),
}
DEMO_ROOT = "demo"
DECODE_CHUNK = 1024  # files in flight in the decode pass
IMPORT_MANIFEST = "manifest.json"  # written by prepare-data (research.data.importers)


class DatasetLayoutError(UserError, ValueError):
    """The dataset folder does not have the expected layout; the message says how to fix it."""


@dataclass
class SplitScan:
    """What was found in one split folder (before decoding)."""

    split: str
    folder: Path
    paths: list[Path]
    targets: list[int]
    not_images: list[Path] = field(default_factory=list)


def find_split_dir(root: Path, split: str) -> Path:
    """Return the folder of ``split`` under ``root``, accepting common spellings (val, test...)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset folder {root} does not exist. Run `poetry run fetch-data` or pass data.root=DIR "
            "(a folder with train/ and validation/ class folders), or data.root=demo."
        )
    spellings = SPLIT_SPELLINGS.get(split, (split,))
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for name in spellings:
        if name in children:
            if name != split:
                log.warning("using %s as the %r split", children[name], split)
            return children[name]
    hint = " For a dataset with train/ only, carve a validation split: data.val_fraction=0.1." if split == "validation" else ""
    raise DatasetLayoutError(
        f"no {split!r} split in {root}: expected one of {', '.join(s + '/' for s in spellings)}; "
        f"found {sorted(children) or 'no folders'}.{hint}"
    )


def has_split_dir(root: Path, split: str) -> bool:
    children = {p.name.lower() for p in Path(root).iterdir() if p.is_dir()}
    return any(name in children for name in SPLIT_SPELLINGS.get(split, (split,)))


def carve_validation(
    scan: SplitScan, *, fraction: float, seed: int, files: Sequence[str] | None = None
) -> tuple[SplitScan, SplitScan]:
    """Split one scanned folder into train and validation: ``files`` (paths relative to the folder, as
    recorded by an earlier run) when given, else a stratified, seeded share ``fraction`` of every
    class (at least one image of each class with two or more)."""
    relative = [str(p.relative_to(scan.folder)) for p in scan.paths]
    if files is not None:
        wanted = set(files)
        missing = sorted(wanted - set(relative))
        if missing:
            raise DatasetLayoutError(
                f"{len(missing)} validation image(s) recorded for this run are gone from {scan.folder}, e.g. "
                f"{missing[:3]}; restore them, or start a new run (a new split)"
            )
        chosen = {i for i, name in enumerate(relative) if name in wanted}
    else:
        rng = np.random.default_rng(seed)
        chosen = set()
        for label, take in _carve_counts(scan, fraction).items():
            members = [i for i, t in enumerate(scan.targets) if t == label]
            chosen.update(int(i) for i in rng.permutation(members)[:take])
    pick = lambda keep: ([p for i, p in enumerate(scan.paths) if (i in chosen) == keep],  # noqa: E731
                         [t for i, t in enumerate(scan.targets) if (i in chosen) == keep])
    train_paths, train_targets = pick(False)
    val_paths, val_targets = pick(True)
    return (
        SplitScan("train", scan.folder, train_paths, train_targets, scan.not_images),
        SplitScan("validation", scan.folder, val_paths, val_targets),
    )


def check_loose_files(folder: Path, files: Sequence[Path]) -> None:
    """Files directly in a split folder, outside every class folder: one named like a class (``train/miedo``
    as a file, e.g. an archive) is an error; images there are not used and a warning names them."""
    for path in files:
        label = None if is_image_path(path) else try_canonical_name(path.stem)
        if label is not None:
            raise DatasetLayoutError(
                f"{path} is a file, not a class folder: the {label} images must be in a folder "
                f"{path.parent / path.stem}/ (an archive? unpack it there). Replace the file with the folder, or remove it."
            )
    strays = [p.name for p in files if is_image_path(p)]
    if strays:
        log.warning(
            "%s: %d image(s) directly in the split folder, outside every class folder, are not used: %s%s. "
            "Move each into its class folder (e.g. %s/happy/).", folder, len(strays), ", ".join(strays[:5]),
            " ..." if len(strays) > 5 else "", folder,
        )


def _carve_counts(scan: SplitScan, fraction: float) -> dict[int, int]:
    """Validation images to carve per class: ``fraction`` of it, rounded, and at least one (so every class
    is validated; the log says so when that raises the share); a class needs two images, one per split."""
    counts = Counter(scan.targets)
    single = [CANONICAL_CLASSES[c] for c, n in sorted(counts.items()) if n < 2]
    if single:
        raise DatasetLayoutError(
            f"{scan.folder}: class(es) {single} have a single image, so data.val_fraction={fraction} cannot put one "
            "in train and one in validation. Add images of them, remove their folders (with "
            "data.require_all_classes=false), or give the dataset a validation/ folder (data.val_fraction=0)."
        )
    takes = {c: min(max(round(n * fraction), 1), n - 1) for c, n in sorted(counts.items())}
    raised = [CANONICAL_CLASSES[c] for c, n in counts.items() if round(n * fraction) < 1]
    if raised:
        log.warning(
            "data.val_fraction=%g rounds to no image for %s; one image of each was taken so every class is "
            "validated (the validation share is therefore %.1f %%, not %g %%)",
            fraction, ", ".join(sorted(raised)), 100 * sum(takes.values()) / len(scan.paths), 100 * fraction,
        )
    return takes


def scan_split(folder: Path, split: str) -> SplitScan:
    """List class folders and image files of one split; checks the layout, decodes nothing."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    check_loose_files(folder, [p for p in entries if not p.is_dir()])
    if not class_dirs:
        raise DatasetLayoutError(
            f"{folder} has no class folders. Put each class's images in its own folder, "
            f"e.g. {folder}/alegria/*.jpg."
        )
    mapping = map_folders(p.name for p in class_dirs)
    scan = SplitScan(split=split, folder=folder, paths=[], targets=[])
    for class_dir in class_dirs:
        # Broken symbolic links are kept: decoding reports them by path (never silently dropped).
        files = sorted(
            p for p in class_dir.rglob("*") if (p.is_file() or (p.is_symlink() and not p.exists())) and not p.name.startswith(".")
        )
        images = [p for p in files if is_image_path(p)]
        scan.not_images.extend(p for p in files if not is_image_path(p))
        if not images:
            raise DatasetLayoutError(
                f"class folder {class_dir} has no images (jpg/png/bmp/webp...). "
                "Add images or remove the folder."
            )
        label = CANONICAL_CLASSES.index(mapping[class_dir.name])
        scan.paths.extend(images)
        scan.targets.extend([label] * len(images))
    return scan


def decode_all(
    paths: Sequence[Path],
    *,
    keep_size: int | None,
    keep: bool,
    workers: int = 4,
    desc: str = "decode",
    store: MmapImages | None = None,
    face_crop: FaceCropStep | None = None,
) -> tuple[list[np.ndarray | None], list[tuple[Path, str]]]:
    """Decode every file (threads; PIL releases the GIL). Returns images (or None) and failures.

    With ``store`` every shrunk image is written into slot ``i`` of the memory-mapped file as
    soon as it is decoded and not returned (the returned list holds None), so the pass holds
    at most a few images at a time, as with ``keep=False``. ``face_crop`` crops each image
    (``data.face_crop``) before it is shrunk.
    """

    def one(item: tuple[int, Path]) -> np.ndarray | str:
        index, path = item
        try:
            image = load_image(path)
        except ImageDecodeError as err:
            return str(err)
        if face_crop is not None:
            image = face_crop(image, name=str(path))
        if store is not None:
            store.write(index, shrink_to(image, keep_size))
            return np.empty(0)
        return shrink_to(image, keep_size) if keep else np.empty(0)

    images: list[np.ndarray | None] = []
    failures: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, tqdm(
        total=len(paths), desc=desc, leave=False, disable=None
    ) as bar:
        # Submitted in chunks: Executor.map makes a future per item at once (~1 KiB each, 100 MiB per 100k files).
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = list(enumerate(paths[start : start + DECODE_CHUNK], start))
            for (_, path), result in zip(chunk, pool.map(one, chunk), strict=True):
                if isinstance(result, str):
                    failures.append((path, result))
                    images.append(None)
                else:
                    images.append(result if keep and store is None else None)
            bar.update(len(chunk))
    return images, failures


class EmotionDataset(Dataset):
    """Labelled face images: ``dataset[i] -> (tensor CxHxW float32, label int)``.

    Images come from memory (``images``) or are decoded from ``paths`` on access.
    ``images`` is a list (memory cache) or a memory-mapped store (:class:`MmapImages`);
    ``transform`` is an albumentations pipeline ending in ``ToTensorV2``.
    """

    def __init__(
        self,
        targets: Sequence[int],
        *,
        names: Sequence[str],
        paths: Sequence[Path] | None = None,
        images: Sequence[np.ndarray] | None = None,
        transform: Callable | None = None,
        split: str = "",
        keep_size: int | None = None,
        face_crop: FaceCropStep | None = None,
    ) -> None:
        if (paths is None) == (images is None):
            raise ValueError("give exactly one of paths or images")
        self.targets = list(targets)
        self.names = list(names)
        self.paths = list(paths) if paths is not None else None
        self.images = images if isinstance(images, MmapView) or images is None else list(images)
        self.transform = transform
        self.split = split
        self.keep_size = keep_size
        self.face_crop = face_crop  # streamed images are cropped on every access

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> np.ndarray:
        """The untransformed image, HxWx3 uint8 RGB."""
        if self.images is not None:
            return self.images[index]
        image = load_image(self.paths[index])
        if self.face_crop is not None:
            image = self.face_crop(image, name=str(self.paths[index]))
        return shrink_to(image, self.keep_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1).float().div(255.0), self.targets[index]
        return self.transform(image=image)["image"], self.targets[index]

    @property
    def class_counts(self) -> dict[str, int]:
        """Images per canonical class (0 for absent classes), in class-index order."""
        counts = Counter(self.targets)
        return {name: counts.get(i, 0) for i, name in enumerate(CANONICAL_CLASSES)}

    @property
    def present_classes(self) -> list[int]:
        return sorted(set(self.targets))


@dataclass
class DataBundle:
    """Train and validation datasets plus what the report needs to know about them."""

    train: EmotionDataset
    val: EmotionDataset
    root: str
    name: str
    synthetic: bool
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, dict[str, int]]:
        return {"train": self.train.class_counts, "validation": self.val.class_counts}


def load_split(
    folder: Path,
    split: str,
    *,
    bad_files: BadFilePolicy = "error",
    cache: bool | str = "memory",
    keep_size: int | None = None,
    workers: int = 4,
    cache_dir: str | Path | None = None,
    scan: SplitScan | None = None,
    face_crop: FaceCropStep | None = None,
) -> tuple[EmotionDataset, list[tuple[Path, str]]]:
    """Scan and decode one split folder. Returns the dataset and the skipped files with reasons.

    ``cache`` is memory, mmap or stream (see the module docstring); ``auto`` is resolved by
    :func:`load_datasets`, which sees both splits, and means memory here.
    """
    mode = normalize_cache_mode(cache)
    mode = "memory" if mode == "auto" else mode
    if mode == "mmap" and keep_size is None:
        raise ValueError("data.cache=mmap needs a keep_size (the slot side of the file)")
    scan = scan or scan_split(folder, split)
    skipped = [(p, f"{p}: not an image file (extension {p.suffix or 'none'})") for p in scan.not_images]
    store = MmapImages(len(scan.paths), keep_size, folder=cache_dir, name=split) if mode == "mmap" else None
    images, failures = decode_all(
        scan.paths, keep_size=keep_size, keep=mode == "memory", workers=workers, desc=f"decode {split}", store=store,
        face_crop=face_crop,
    )
    if face_crop is not None:
        found, missed = face_crop.reset_counts()
        log.info(
            "%s: face crop (%s) found a face in %d of %d images; %d without a face keep the whole image",
            folder, face_crop.label, found, found + missed, missed,
        )
    skipped.extend(failures)
    if skipped:
        listing = "\n  ".join(reason for _, reason in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        if bad_files == "error" and failures:
            raise ImageDecodeError(
                f"{len(failures)} file(s) in {folder} cannot be decoded:\n  {listing}{more}\n"
                "Fix or delete them, or set data.bad_files=skip to train without them."
            )
        log.warning("%s: %d file(s) left out:\n  %s%s", folder, len(skipped), listing, more)
    bad = {p for p, _ in failures}
    keep_idx = [i for i, p in enumerate(scan.paths) if p not in bad]
    if not keep_idx:
        raise DatasetLayoutError(f"{folder}: no readable images at all.")
    names = [str(scan.paths[i].relative_to(folder)) for i in keep_idx]
    targets = [scan.targets[i] for i in keep_idx]
    if mode == "memory":
        dataset = EmotionDataset(targets, names=names, images=[images[i] for i in keep_idx], split=split)
    elif mode == "mmap":
        dataset = EmotionDataset(targets, names=names, images=store.subset(keep_idx), split=split)
    else:
        paths = [scan.paths[i] for i in keep_idx]
        dataset = EmotionDataset(targets, names=names, paths=paths, split=split, keep_size=keep_size, face_crop=face_crop)
    return dataset, skipped


def check_same_classes(train: EmotionDataset, val: EmotionDataset, root: str) -> None:
    """Train and validation must hold the same classes; say which differ."""
    train_set, val_set = set(train.present_classes), set(val.present_classes)
    if train_set != val_set:
        only_train = [CANONICAL_CLASSES[i] for i in sorted(train_set - val_set)]
        only_val = [CANONICAL_CLASSES[i] for i in sorted(val_set - train_set)]
        raise DatasetLayoutError(
            f"train and validation in {root} hold different classes: only in train {only_train}, "
            f"only in validation {only_val}. Add the missing class folders (with images) to both splits."
        )


def load_datasets(
    root: str | Path,
    *,
    bad_files: BadFilePolicy = "error",
    cache: bool | str = "auto",
    keep_size: int | None = None,
    cache_budget_mb: int = 0,
    cache_dir: str | Path | None = None,
    require_all_classes: bool = True,
    workers: int = 4,
    demo_size: int = 64,
    demo_scale: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.0,
    val_split_seed: int = 0,
    val_files: Sequence[str] | None = None,
    face_crop: FaceCropStep | None = None,
) -> DataBundle:
    """Build train/validation datasets from a folder root, or the synthetic demo set for ``"demo"``.

    ``cache`` (auto | memory | mmap | stream, or True/False for memory/stream) and
    ``cache_budget_mb`` (0: a quarter of physical memory) pick where the decoded images stay,
    from an estimate made before anything is decoded (:func:`choose_cache_mode`);
    ``cache_dir`` is where a memory-mapped file goes (None: the system temp dir).
    ``val_fraction`` > 0 carves a stratified validation split (seed ``val_split_seed``) from
    ``train/`` of a dataset without ``validation/``; ``val_files`` replays a recorded split.
    ``face_crop`` (``data.face_crop``) crops every image of both splits once, as it is decoded.
    """
    if str(root) == DEMO_ROOT:
        return _demo_bundle(size=demo_size, seed=seed, scale=demo_scale, face_crop=face_crop)
    root = Path(root).expanduser()
    check_import_complete(root)
    (train_dir, train_scan), (val_dir, val_scan) = _scan_splits(
        root, val_fraction=val_fraction, val_split_seed=val_split_seed, val_files=val_files
    )
    scans = {"train": train_scan, "validation": val_scan}
    mode = resolve_cache_mode(
        cache, count=sum(len(s.paths) for s in scans.values()), keep_size=keep_size,
        budget_mb=cache_budget_mb, cache_dir=cache_dir,
    )
    kwargs = dict(bad_files=bad_files, cache=mode, keep_size=keep_size, workers=workers, cache_dir=cache_dir, face_crop=face_crop)
    train, skipped_train = load_split(train_dir, "train", scan=scans["train"], **kwargs)
    val, skipped_val = load_split(val_dir, "validation", scan=scans["validation"], **kwargs)
    check_same_classes(train, val, str(root))
    missing = [c for i, c in enumerate(CANONICAL_CLASSES) if i not in train.present_classes]
    if missing:
        message = f"{root} has no images of {missing}; the model still has {len(CANONICAL_CLASSES)} outputs."
        if require_all_classes:
            raise DatasetLayoutError(message + " Add those class folders or set data.require_all_classes=false.")
        log.warning(message)
    log.info(
        "dataset %s: %d train images (%s), %d validation images (%s)",
        root, len(train), train_dir.name, len(val), val_dir.name,
    )
    return DataBundle(train, val, root=str(root), name=root.name, synthetic=False, skipped=skipped_train + skipped_val)


def check_import_complete(root: Path) -> None:
    """Refuse a dataset that ``prepare-data`` was still writing when it stopped (its ``manifest.json``
    says ``"complete": false``): some of its images are missing."""
    manifest = root / IMPORT_MANIFEST
    if not manifest.is_file():
        return
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not a manifest prepare-data wrote; the folder is read like any other
    if isinstance(data, dict) and data.get("complete") is False:
        command = f"poetry run prepare-data {data.get('format', 'FORMAT')} {data.get('source', 'SRC')} {root}"
        raise DatasetLayoutError(
            f"{root} is an unfinished import: {manifest} says \"complete\": false (prepare-data stopped while writing "
            f"it, so images are missing). Finish it with `{command}`, then train."
        )


def _demo_bundle(*, size: int, seed: int, scale: float, face_crop: FaceCropStep | None) -> DataBundle:
    """The synthetic demo set, generated (deterministic by ``seed``) and cropped like real images."""
    from research.data.demo import make_demo_split

    splits = {}
    for split in ("train", "validation"):
        images, targets = make_demo_split(split, size=size, seed=seed, scale=scale)
        if face_crop is not None:
            images = [face_crop(image, name=f"demo {split} {i}") for i, image in enumerate(images)]
            found, missed = face_crop.reset_counts()
            log.info("demo %s: face crop (%s) found a face in %d of %d images", split, face_crop.label, found, found + missed)
        names = [f"{split}/{CANONICAL_CLASSES[t]}/{i:05d}.png" for i, t in enumerate(targets)]
        splits[split] = EmotionDataset(targets, names=names, images=images, split=split)
    log.info("using the built-in SYNTHETIC demo data (drawn faces), not real photos")
    return DataBundle(splits["train"], splits["validation"], root=DEMO_ROOT, name="synthetic demo data", synthetic=True)


def _scan_splits(
    root: Path, *, val_fraction: float, val_split_seed: int, val_files: Sequence[str] | None
) -> tuple[tuple[Path, SplitScan], tuple[Path, SplitScan]]:
    """(folder, scan) of the train and validation splits: the split folders, or a validation split
    carved from ``train/`` (``val_fraction``, or the recorded ``val_files``)."""
    train_dir = find_split_dir(root, "train")
    if not (val_fraction > 0 or val_files is not None):
        val_dir = find_split_dir(root, "validation")
        return (train_dir, scan_split(train_dir, "train")), (val_dir, scan_split(val_dir, "validation"))
    if has_split_dir(root, "validation"):
        raise DatasetLayoutError(
            f"{root} has a validation folder, and data.val_fraction={val_fraction} asks to carve one from "
            "train/: use one of them (data.val_fraction=0 uses the folder)"
        )
    train_scan, val_scan = carve_validation(
        scan_split(train_dir, "train"), fraction=val_fraction, seed=val_split_seed, files=val_files
    )
    total = len(train_scan.paths) + len(val_scan.paths)
    per_class = Counter(CANONICAL_CLASSES[t] for t in val_scan.targets)
    log.info(
        "validation split carved from %s: %d of %d images (%.1f %%; data.val_fraction=%g, seed %d, stratified: %s)",
        train_dir, len(val_scan.paths), total, 100 * len(val_scan.paths) / max(total, 1), val_fraction, val_split_seed,
        ", ".join(f"{name} {n}" for name, n in sorted(per_class.items())),
    )
    return (train_dir, train_scan), (train_dir, val_scan)
