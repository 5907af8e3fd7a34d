"""New-image predictions: any folder of photos, scored raw, after a Haar face crop and/or after
landmark alignment (:mod:`research.faces.align`), side by side.

Preprocessing is never re-typed here: the model and its eval transform are rebuilt
from the run folder (:func:`research.inference.loaded.load_run`), so a photo goes through exactly
what validation images went through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from research import plots
from research.data.classes import label_from_filename, try_canonical_name
from research.data.images import ImageDecodeError, is_image_path, load_image
from research.errors import InputFileError, check_writable
from research.faces.factory import FaceDetector, face_detector
from research.faces.geometry import NoFaceFoundError
from research.faces.settings import MODES, resolve_mode
from research.inference import explain
from research.inference.comparison import CROP_MODES, compare_modes, summary_table
from research.inference.loaded import (
    LoadedRun,
    load_onnx,
    load_run,
    predict_arrays,
    training_wandb_run,
)
from research.tracking.claim import PREDICT, FolderClaim
from research.tracking.names import safe_name
from research.tracking.runs import RunFolder, write_json
from research.tracking.wandb_log import WandbRun

log = logging.getLogger(__name__)



@dataclass
class NewImage:
    name: str  # path relative to the folder
    path: Path
    image: np.ndarray  # HxWx3 uint8 RGB
    true: str | None  # canonical label from the subfolder or file name


def true_label(path: Path, folder: Path) -> str | None:
    """A label from a class subfolder (``alegria/x.jpg``) or the file name (``anger_1.jpg``)."""
    rel = path.relative_to(folder)
    for part in rel.parts[:-1]:
        label = try_canonical_name(part)
        if label:
            return label
    return label_from_filename(path.stem)


def read_new_images(folder: str | Path) -> tuple[list[NewImage], list[str]]:
    """Decode every image under ``folder``; non-images and broken files are skipped and reported."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"image folder {folder} does not exist")
    images, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        name = str(path.relative_to(folder))
        if not is_image_path(path):
            skipped.append(f"{name}: not an image file (skipped)")
            continue
        try:
            images.append(NewImage(name, path, load_image(path), true_label(path, folder)))
        except ImageDecodeError as err:
            skipped.append(f"{err} (skipped)")
    for message in skipped:
        log.warning("%s", message)
    if not images:
        raise InputFileError(f"no readable images (jpg/png/webp/bmp...) in {folder}")
    return images, skipped


def _safe_stem(name: str) -> str:
    """An image's name (``sub/x.jpg``) as the stem of the files made from it (``sub_x``)."""
    return safe_name(Path(name).with_suffix("").as_posix(), fill="_")


def predict_images(
    loaded: LoadedRun,
    images: Sequence[NewImage],
    *,
    mode: str,
    cropper: FaceDetector | None,
    out_dir: Path,
    gradcam: bool = False,
) -> list[dict[str, Any]]:
    """Score images in one mode (``raw``, ``haar`` or ``aligned``); writes panels, sheet and predictions.json,
    and with ``gradcam`` the winner's Grad-CAM over each model input in ``gradcam/<image>.png``.

    In a crop mode without fallback, images without a face are left out (no record);
    :func:`predict_folder` lists them in ``comparison.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "panels").mkdir(exist_ok=True)
    inputs, meta = [], []
    for item in _progress(images, f"{mode}: faces" if mode in CROP_MODES else f"{mode}: read"):
        crop = None
        if mode in CROP_MODES:
            assert cropper is not None
            crop = _crop_or_none(cropper, item)
            if crop is None:
                log.warning("%s: no face found; skipped in %s mode (fallback off)", item.name, mode)
                continue
            inputs.append(crop.image)
        else:
            inputs.append(item.image)
        meta.append((item, crop))
    if not inputs:
        return []
    probs, tensors = predict_arrays(loaded, inputs)
    cams = _gradcam_or_none(loaded, tensors, probs.argmax(1)) if gradcam else None
    names = loaded.class_names
    panels = plots.PredictionPanels()
    records = []
    for index, ((item, crop), p, tensor) in enumerate(_progress(zip(meta, probs, tensors, strict=True), f"{mode}: panels", len(meta))):
        scores = {c: float(v) for c, v in zip(names, p, strict=True)}
        winner = names[int(np.argmax(p))]
        face_found = None if crop is None else crop.found
        note = "no face found: whole image used" if crop is not None and crop.fallback else ""
        model_input = plots.denormalize(tensor, loaded.mean, loaded.std)
        panel = panels.save(
            out_dir / "panels" / f"{_safe_stem(item.name)}.png",
            name=f"{item.name} [{mode}]", original=item.image, box=None if crop is None else crop.box,
            crop=None if crop is None else (crop.image if crop.found else None), model_input=model_input,
            scores=scores, winner=winner, true_label=item.true, note=note, detection_run=mode in CROP_MODES,
        )
        records.append(
            {
                "image": item.name, "path": str(item.path), "mode": mode, "face_found": face_found,
                "fallback": bool(crop is not None and crop.fallback), "box": None if crop is None or crop.box is None else list(crop.box),
                "scores": scores, "winner": winner, "confidence": float(np.max(p)), "true": item.true,
                "correct": None if item.true is None else winner == item.true,
                "panel": str(panel.relative_to(out_dir)),
                # arrays for the W&B table; dropped from the JSON
                "original": item.image, "crop": None if crop is None or not crop.found else crop.image, "preprocessed": model_input,
            }
        )
        if cams is not None:
            records[-1]["gradcam_overlay"] = explain.overlay(model_input, cams[index])
            cam_png = explain.save_overlay(out_dir / "gradcam" / f"{_safe_stem(item.name)}.png", records[-1]["gradcam_overlay"])
            records[-1]["gradcam"] = str(cam_png.relative_to(out_dir))
    plots.plot_prediction_sheet([out_dir / r["panel"] for r in records], out_dir / "sheet.png", title=f"{loaded.run_id}: new images ({mode})")
    write_json(out_dir / "predictions.json", [_json_record(r) for r in records])
    return records


def _progress(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A progress bar over the images of one mode (shown on a terminal, not when stderr is a file or a pipe)."""
    return tqdm(items, desc=desc, total=total, unit="image", leave=False, disable=None)


def _gradcam_or_none(loaded: LoadedRun, tensors: Any, winners: np.ndarray) -> np.ndarray | None:
    """Grad-CAM maps of the winners, or ``None`` (logged) when the model cannot be explained."""
    try:
        return explain.explain_run(loaded, tensors, winners.tolist())
    except explain.GradCamError as err:
        log.warning("no Grad-CAM images: %s", err)
        return None


def _crop_or_none(cropper: FaceDetector, item: NewImage):
    """The face crop; ``None`` when no face was found and the cropper does not fall back."""
    try:
        return cropper(item.image, name=item.name)
    except NoFaceFoundError:
        return None


def _json_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in {"original", "crop", "preprocessed", "gradcam_overlay"}}


def predict_folder(
    run: RunFolder | str | Path | None,
    images_dir: str | Path,
    *,
    face: str = "both",
    out: str | Path | None = None,
    checkpoint: str = "best",
    fallback: bool | None = None,
    wandb_run: WandbRun | None = None,
    loaded: LoadedRun | None = None,
    gradcam: bool = True,
) -> dict[str, Any]:
    """Score a folder in the requested modes; returns ``{"modes": {mode: records}, "comparison": ...}``.

    ``loaded`` (a run folder's model, or an exported one from :func:`load_onnx`) replaces ``run``.
    ``gradcam``: also write each mode's Grad-CAM images and ``gradcam_sheet.png`` of all modes
    (not for an exported model, which has no gradients)."""
    loaded = loaded or load_run(run.path if isinstance(run, RunFolder) else run, which=checkpoint)
    # Built first: a missing alignment extra stops the command before anything is written.
    croppers = {m: face_detector(m, loaded.faces, fallback=fallback) for m in MODES[resolve_mode(face)] if m in CROP_MODES}
    images, skipped = read_new_images(images_dir)
    out_root = Path(out) if out else loaded.predictions_dir
    assert out_root is not None
    check_writable(out_root)
    if gradcam and loaded.run is None:
        log.info("no Grad-CAM for an exported model (it has no gradients); score with --run for Grad-CAM")
        gradcam = False
    # One predict at a time per output folder: another one writing (and reading back) the same panels
    # would mix two sets of files; the second stops with exit code 2 before it writes anything.
    claim = FolderClaim.acquire(out_root, PREDICT)
    try:
        return _predict_into(loaded, images, skipped, croppers, out_root, face=face, checkpoint=checkpoint,
                             images_dir=images_dir, wandb_run=wandb_run, gradcam=gradcam)
    finally:
        claim.release()


def _predict_into(
    loaded: LoadedRun, images: list[NewImage], skipped: list[str], croppers: dict[str, FaceDetector], out_root: Path, *,
    face: str, checkpoint: str, images_dir: str | Path, wandb_run: WandbRun | None, gradcam: bool,
) -> dict[str, Any]:
    """:func:`predict_folder`'s work, in its claimed output folder."""
    by_mode = {
        mode: predict_images(loaded, images, mode=mode, cropper=croppers.get(mode), out_dir=out_root / mode, gradcam=gradcam)
        for mode in MODES[resolve_mode(face)]
    }
    cam_sheet = out_root / "gradcam_sheet.png"
    if any("gradcam_overlay" in r for records in by_mode.values() for r in records):
        explain.plot_gradcam_sheet(by_mode, cam_sheet, title=f"{loaded.run_id}: Grad-CAM of the predicted class")
    else:
        cam_sheet.unlink(missing_ok=True)  # an earlier run's sheet would no longer match these predictions
    skipped_no_face = {
        m: [i.name for i in images if i.name not in {r["image"] for r in by_mode[m]}] for m in croppers
    }
    comparison = compare_modes(by_mode, skipped_no_face=skipped_no_face)
    comparison.update(images_dir=str(images_dir), skipped=skipped, checkpoint=checkpoint)
    if len(by_mode) > 1:
        comparison["side_by_side"] = _side_by_side_panels(by_mode, out_root)
    write_json(out_root / "comparison.json", comparison)
    _log_summary(comparison)
    if wandb_run is not None:
        wandb_run.log_predictions([r for records in by_mode.values() for r in records], loaded.class_names,
                                  display_min=explain.DISPLAY_MIN)  # the size of the Grad-CAM files on disk
        for mode, stats in comparison["modes"].items():
            if stats["accuracy"] is not None:
                wandb_run.update_summary({f"new_images/{mode}_accuracy": stats["accuracy"]})
        wandb_run.log_images({f"predictions/{m}_sheet": out_root / m / "sheet.png" for m in by_mode})
        wandb_run.log_images({"predictions/gradcam_sheet": cam_sheet})  # skipped when not written
    return {"modes": by_mode, "comparison": comparison, "out": out_root}


def _side_by_side_panels(by_mode: dict[str, list[dict[str, Any]]], out_root: Path) -> dict[str, str]:
    """One PNG per image with its panels of every mode stacked top to bottom (raw, haar, aligned),
    in ``side_by_side/``; returns image -> path relative to ``out_root``."""
    from PIL import Image

    panels: dict[str, list[Path]] = {}
    for mode, records in by_mode.items():
        for r in records:
            panels.setdefault(r["image"], []).append(out_root / mode / r["panel"])
    folder = out_root / "side_by_side"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, paths in panels.items():
        parts = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        width = max(p.shape[1] for p in parts)
        stacked = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in parts])
        path = folder / f"{_safe_stem(name)}.png"
        Image.fromarray(stacked).save(path, optimize=False)
        written[name] = str(path.relative_to(out_root))
    return written


def _log_summary(comparison: dict[str, Any]) -> None:
    for mode, s in comparison["modes"].items():
        acc = "n/a (no labels)" if s["accuracy"] is None else f"{s['accuracy']:.3f} on {s['labelled']} labelled"
        faces = "" if mode == "raw" else f", no face found in {s['no_face']}"
        if s.get("skipped_no_face"):
            faces += f" (left out, no fallback: {', '.join(s['skipped_no_face'])})"
        log.info("new images [%s]: %d scored, accuracy %s%s", mode, s["images"], acc, faces)
    for mode, changes in (comparison.get("changes_by_mode") or {}).items():
        for c in changes:
            log.info("  %s: raw %s -> %s %s (true %s, %s)", c["image"], c["raw"], mode, c[mode], c["true"], c["effect"])
    if len(comparison["modes"]) > 1:
        log.info("side by side:\n%s", "\n".join(summary_table(comparison)))


def predict_cli(
    run: Path | None, images: Path, *, face: str, out: Path | None, checkpoint: str, fallback: bool,
    wandb_mode: str | None, onnx: Path | None = None, gradcam: bool = True,
) -> dict[str, Any]:
    """``poetry run predict``: predictions, logged into the training run's W&B run (reopened online, else kept
    for ``sync-runs``, which uploads them into it; a run trained without W&B gets a ``<run>-predict`` run).

    With ``onnx`` (an exported model) the images are scored through onnxruntime with the
    preprocessing in the file's metadata; there is no run folder, so no W&B run and ``--out``
    defaults to ``<model folder>/predictions``."""
    if onnx is not None:
        if not Path(images).is_dir():
            raise InputFileError(f"image folder {images} does not exist")
        loaded = load_onnx(onnx)
        result = predict_folder(None, images, face=face, out=out, checkpoint=onnx.name, fallback=fallback, loaded=loaded)
        log.info("predictions written to %s", result["out"])
        return result
    loaded = load_run(run, which=checkpoint)
    log.info("scoring with %s", loaded.description)
    wandb_run = training_wandb_run(loaded, mode=wandb_mode, job_type="predict")
    try:
        result = predict_folder(
            loaded.run, images, face=face, out=out, checkpoint=checkpoint, fallback=fallback, wandb_run=wandb_run,
            loaded=loaded, gradcam=gradcam,
        )
    finally:
        wandb_run.finish()
    log.info("predictions written to %s", result["out"])
    return result


def new_images_step(images_dir: str | Path) -> Callable[[RunFolder, WandbRun], None]:
    """``train(after_fit=...)``: score a folder of new photos raw and Haar-cropped with the finished
    run, into its ``predictions/`` and its W&B run (the ``run.new_images`` setting)."""

    def step(run: RunFolder, wandb_run: WandbRun) -> None:
        predict_folder(run, images_dir, face="both", wandb_run=wandb_run)

    return step
