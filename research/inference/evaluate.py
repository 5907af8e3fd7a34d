"""Score a trained run on any labelled image set (held-out test splits, cross-dataset checks).

Accepted layouts of ``DATA_DIR``: a dataset root with split folders (``--split test``),
a folder of class subfolders (Spanish or English names), or a flat folder whose file
names carry the label (``anger_1.jpg``). Classes the model knows but the set lacks are
reported; F1 and the report cover the classes present, and predictions of absent
classes still count as errors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from research.data.classes import CANONICAL_CLASSES, label_from_filename
from research.data.datasets import (
    SPLIT_SPELLINGS,
    DatasetLayoutError,
    carve_validation,
    find_split_dir,
    has_split_dir,
    scan_split,
)
from research.data.images import ImageDecodeError, is_image_path, load_image
from research.errors import check_writable
from research.faces.align import LandmarkAligner
from research.faces.factory import face_detector
from research.faces.haar import HaarFaceCropper
from research.faces.settings import DETECTORS
from research.inference.evaluation import evaluate_scores, write_evaluation
from research.inference.loaded import LoadedRun, linked_wandb_run, load_run, predict_logits
from research.tracking.runs import write_json

log = logging.getLogger(__name__)


def find_labelled_images(
    data_dir: Path, split: str | None = None, recorded_val_split: list[str] | None = None
) -> tuple[list[Path], list[int], str]:
    """Paths, canonical targets and a description of the layout that was used. ``recorded_val_split``:
    a run's validation files carved from ``train/``, used for ``--split validation`` when the dataset
    has no validation folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetLayoutError(f"{data_dir} is not a folder of labelled images")
    if split and recorded_val_split is not None and split in SPLIT_SPELLINGS["validation"] and not has_split_dir(data_dir, split):
        train_dir = find_split_dir(data_dir, "train")
        _, scan = carve_validation(scan_split(train_dir, "train"), fraction=0.0, seed=0, files=recorded_val_split)
        return scan.paths, scan.targets, f"{train_dir} (the run's validation split carved from train/, val_split.json)"
    if split:
        folder = find_split_dir(data_dir, split)
        scan = scan_split(folder, split)
        return scan.paths, scan.targets, f"{folder} (split {folder.name}, class folders)"
    subdirs = [p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_names = {name for spellings in SPLIT_SPELLINGS.values() for name in spellings}
    if subdirs and all(p.name.lower() in split_names for p in subdirs):
        raise DatasetLayoutError(
            f"{data_dir} holds split folders ({', '.join(sorted(p.name for p in subdirs))}); choose one with --split NAME"
        )
    if subdirs:
        scan = scan_split(data_dir, "eval")
        return scan.paths, scan.targets, f"{data_dir} (class folders)"
    paths, targets, unlabelled = [], [], []
    for path in sorted(p for p in data_dir.iterdir() if p.is_file() and is_image_path(p)):
        label = label_from_filename(path.stem)
        if label is None:
            unlabelled.append(path.name)
            continue
        paths.append(path)
        targets.append(CANONICAL_CLASSES.index(label))
    if unlabelled:
        log.warning("%d images without a label in their name were left out, e.g. %s", len(unlabelled), unlabelled[:3])
    if not paths:
        raise DatasetLayoutError(
            f"{data_dir}: no labelled images. Use class subfolders (anger/, alegria/...), split folders with "
            "--split, or file names that start with the label (anger_1.jpg)."
        )
    return paths, targets, f"{data_dir} (labels from file names)"


class EvalImages(Dataset):
    """``(tensor, target, index, ok, face_found)``; a file that fails to decode gives ok=False."""

    def __init__(self, paths: list[Path], targets: list[int], transform: Any, cropper: HaarFaceCropper | LandmarkAligner | None, size: int, channels: int) -> None:
        self.paths, self.targets, self.transform, self.cropper = paths, targets, transform, cropper
        self.blank = torch.zeros(channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.paths[i])
        except ImageDecodeError:
            return self.blank, self.targets[i], i, False, False
        face_found = True
        if self.cropper is not None:
            crop = self.cropper(image, name=str(self.paths[i]))
            image, face_found = crop.image, crop.found
        return self.transform(image=image)["image"], self.targets[i], i, True, face_found


@dataclass
class EvaluationResult:
    name: str
    out_dir: Path
    metrics: dict[str, Any]


def evaluate_run(
    loaded: LoadedRun,
    data_dir: Path,
    *,
    split: str | None = None,
    face: str = "raw",
    tta: str = "none",
    out: Path | None = None,
    name: str | None = None,
    batch_size: int = 64,
    bad_files: str = "skip",
    num_workers: int = 0,
) -> EvaluationResult:
    """Score ``data_dir`` with a loaded run; write ``evaluations/<name>/``. ``face``: raw, haar (Haar
    crop) or aligned (landmark alignment); images without a face are scored whole and counted."""
    cropper = face_detector(face, loaded.faces, fallback=True) if face in DETECTORS else None
    paths, targets, layout = find_labelled_images(Path(data_dir), split, loaded.run.val_split_files())
    name = name or "-".join(x for x in (Path(data_dir).name, split, face if face != "raw" else "", "tta" if tta == "hflip" else "") if x)
    out_dir = Path(out) if out else loaded.outputs / "evaluations" / name
    check_writable(out_dir)
    dataset = EvalImages(paths, targets, loaded.transform, cropper, loaded.cfg.data.image_size, loaded.cfg.data.channels)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    kept_targets: list[torch.Tensor] = []
    failed: list[str] = []
    no_face = 0

    def decoded_batches():
        nonlocal no_face
        for x, y, idx, ok, found in tqdm(loader, desc=f"evaluate {name}", unit="batch", disable=None):
            failed.extend(str(paths[i]) for i in idx[~ok].tolist())
            no_face += int((ok & ~found).sum())
            if ok.any():
                kept_targets.append(y[ok])
                yield x[ok]

    start = time.perf_counter()
    logits = predict_logits(loaded.model, decoded_batches(), device=loaded.device, tta=tta)
    seconds = time.perf_counter() - start
    if failed:
        message = f"{len(failed)} file(s) could not be decoded: {failed[:5]}"
        if bad_files == "error":
            raise ImageDecodeError(message + " (use --bad-files skip to leave them out)")
        log.warning("%s; left out", message)
    if not kept_targets:
        raise DatasetLayoutError(f"{data_dir}: no image could be scored")
    target = torch.cat(kept_targets).numpy()
    # No "loss": the training criterion's class weights belong to the training set; "nll" is plain cross-entropy.
    evaluation = evaluate_scores(logits.numpy(), target, loaded.class_names)
    names = loaded.class_names
    absent = [names[i] for i in range(len(names)) if i not in evaluation.labels]
    label = f"{loaded.run_id} on {Path(data_dir).name}{'/' + split if split else ''}"
    write_evaluation(evaluation, out_dir, label=label, header=layout)
    result = {
        **evaluation.metrics, "images": int(len(target)), "failed_files": failed, "no_face": no_face if cropper is not None else None,
        "images_per_s": len(target) / max(seconds, 1e-9), "dataset": str(data_dir), "split": split, "layout": layout,
        "face": face, "tta": tta, "classes_present": [names[i] for i in evaluation.labels], "classes_absent": absent,
        "per_class": evaluation.per_class, "confusion_counts": evaluation.counts.tolist(), "run_id": loaded.run_id,
    }
    write_json(out_dir / "metrics.json", result)
    if absent:
        log.warning("classes absent from %s: %s (F1 over the %d present classes)", data_dir, absent, len(evaluation.labels))
    return EvaluationResult(name, out_dir, result)


def format_table(result: EvaluationResult) -> str:
    m = result.metrics
    rows = [("images", f"{m['images']}"), ("accuracy", f"{m['acc']:.3f}"), ("top-2", f"{m['top2']:.3f}"),
            ("macro-F1", f"{m['macro_f1']:.3f}"), ("weighted-F1", f"{m['weighted_f1']:.3f}"),
            ("NLL", f"{m['nll']:.3f}"), ("ECE", f"{m['ece']:.3f}"), ("images/s", f"{m['images_per_s']:.1f}")]
    if m.get("no_face") is not None:
        rows.append(("no face found", str(m["no_face"])))
    return "\n".join(f"  {k:<12} {v}" for k, v in rows)


def evaluate_cli(args: Any) -> EvaluationResult:
    """``poetry run evaluate``: evaluation + a W&B run (job type evaluate) linked to the training run."""
    loaded = load_run(args.run, which=args.checkpoint)
    log.info("scoring with %s", loaded.description)
    result = evaluate_run(
        loaded, args.data_dir, split=args.split, face=args.face, tta=args.tta or (loaded.cfg.train.get("tta", "none") if loaded.cfg is not None else "none"),
        out=args.out, name=args.name,
        batch_size=args.batch_size, bad_files=args.bad_files,
    )
    wandb_run = linked_wandb_run(
        loaded, job_type="evaluate", name=f"eval-{result.name}", mode=args.wandb,
        extra_config={"eval.dataset": str(args.data_dir), "eval.split": args.split},
    )
    try:
        m = result.metrics
        wandb_run.update_summary({f"eval/{k}": m[k] for k in ("acc", "top2", "macro_f1", "weighted_f1", "nll", "ece", "images")})
        wandb_run.log_images({f"eval/{p.stem}": p for p in result.out_dir.glob("confusion_*.png")})
    finally:
        wandb_run.finish()
    log.info("evaluation %s of %s written to %s\n%s", result.name, loaded.description, result.out_dir, format_table(result))
    return result
