"""Grad-CAM: which part of the model input drove the predicted class.

The heatmaps come from the ``grad-cam`` library (``pytorch_grad_cam.GradCAM``) on the layer the
model registry names for the architecture (:func:`research.models.cam_target_layer`). The inputs
are the tensors :func:`research.inference.loaded.predict_arrays` already made with the run's eval
transform, and the explained class is the winner it scored, so a heatmap belongs to exactly the
prediction shown beside it. ``pytorch_grad_cam`` (which imports torchvision) is imported when a
heatmap is first computed, not with this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from research.inference.loaded import LoadedRun
from research.models import cam_target_layer

log = logging.getLogger(__name__)

DISPLAY_MIN = 192  # per-image Grad-CAM PNGs are enlarged (whole pixels) to at least this many pixels a side
IMAGE_WEIGHT = 0.5  # overlay = IMAGE_WEIGHT * image + (1 - IMAGE_WEIGHT) * heatmap
SHEET_CELL = 160  # pixels per image in the Grad-CAM sheet
SHEET_MAX_ROWS = 100  # a sheet shows at most this many images
PNG = {"compress_level": 1}
# The winner's caption, as the prediction panels colour their heading (matplotlib's tab:green / tab:red).
RIGHT, WRONG, UNKNOWN = (44, 160, 44), (214, 39, 40), (0, 0, 0)


class GradCamError(RuntimeError):
    """Grad-CAM cannot explain this model (an exported model, or a layer without a 2-D feature map)."""


def gradcam_maps(
    model: torch.nn.Module, target_layer: torch.nn.Module, inputs: torch.Tensor, classes: Sequence[int], *, batch_size: int = 16
) -> np.ndarray:
    """Grad-CAM of ``classes[i]`` for ``inputs[i]``: ``(N, H, W)`` float32 in [0, 1], H x W of the inputs.

    Each map is scaled to its own maximum (the library's min-max scaling), so it shows where the
    evidence is, not how strong it is. Runs on the model's device (CUDA when the model is there).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(inputs) != len(classes):
        raise ValueError(f"{len(inputs)} inputs but {len(classes)} classes to explain")
    maps = []
    with GradCAM(model=model, target_layers=[target_layer]) as cam, torch.enable_grad():
        # The input carries the gradient, so a frozen backbone (no trainable parameters) is explained too.
        cam.compute_input_gradient = True
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + batch_size]]
            try:
                maps.append(cam(input_tensor=batch, targets=targets))
            except (ValueError, IndexError) as err:  # e.g. a transformer block's (B, tokens, C) output
                raise GradCamError(f"Grad-CAM cannot explain layer {type(target_layer).__name__}: {err}") from err
    model.zero_grad(set_to_none=True)
    if not maps:
        return np.empty((0, *inputs.shape[-2:]), np.float32)
    return np.clip(np.concatenate(maps).astype(np.float32), 0.0, 1.0)


def explain_run(loaded: LoadedRun, inputs: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` of a loaded run for its preprocessed ``inputs`` (from
    :func:`research.inference.loaded.predict_arrays`) and the ``classes`` to explain (usually the winners).

    Raises:
        GradCamError: the run is an exported model (no gradients) or its layer has no 2-D feature map.
    """
    if loaded.cfg is None or not isinstance(loaded.model, torch.nn.Module):
        raise GradCamError("Grad-CAM needs the PyTorch model of a run folder; an exported (ONNX) model has no gradients")
    try:
        layer = cam_target_layer(loaded.model, loaded.cfg.model.name)
    except ValueError as err:
        raise GradCamError(str(err)) from None
    return gradcam_maps(loaded.model, layer, inputs, classes)


def overlay(model_input: np.ndarray, cam: np.ndarray, *, image_weight: float = IMAGE_WEIGHT) -> np.ndarray:
    """The heatmap (jet colours) blended over the model input: HxWx3 uint8.

    ``model_input``: HxW (grayscale, shown as gray RGB) or HxWx3 float in [0, 1], as
    :func:`research.plots.denormalize` returns it; ``cam``: HxW in [0, 1].
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image = np.clip(np.asarray(model_input, dtype=np.float32), 0.0, 1.0)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[:2] != cam.shape:
        raise ValueError(f"heatmap {cam.shape} and model input {image.shape[:2]} differ in size")
    return show_cam_on_image(image, cam, use_rgb=True, image_weight=image_weight)


def save_overlay(path: Path, image: np.ndarray) -> Path:
    """Write an HxWx3 uint8 overlay enlarged by a whole factor (nearest pixels) to >= ``DISPLAY_MIN`` a side."""
    factor = max(1, math.ceil(DISPLAY_MIN / min(image.shape[:2])))
    pil = Image.fromarray(image)
    if factor > 1:
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, **PNG)
    return path


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _cell(image: np.ndarray | None, text: str = "") -> Image.Image:
    if image is None:
        cell = Image.new("RGB", (SHEET_CELL, SHEET_CELL), (235, 235, 235))
        ImageDraw.Draw(cell).text((SHEET_CELL // 2, SHEET_CELL // 2), text, fill="black", anchor="mm", font=_font(14))
        return cell
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    pil = Image.fromarray(array).convert("RGB")
    return pil.resize((SHEET_CELL, SHEET_CELL), Image.Resampling.BILINEAR)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text``, its start cut to "..." when wider than ``width`` pixels (the file name's end is kept)."""
    font = _font(14)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def plot_gradcam_sheet(by_mode: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, *, title: str = "") -> Path:
    """All new images with their Grad-CAM, one row per image, per mode a model-input and a Grad-CAM cell.

    Records as :func:`research.inference.predict.predict_images` returns them (``image``, ``preprocessed``,
    ``gradcam_overlay``, ``winner``, ``confidence``, ``true``); an image a mode did not score (no face found,
    no fallback) gets a grey "not scored" cell. Each winner is green when it equals the true label, red when
    it does not, black when the label is unknown; the true label follows the image's name. At most
    ``SHEET_MAX_ROWS`` images.
    """
    modes = list(by_mode)
    lookup = {m: {r["image"]: r for r in by_mode[m]} for m in modes}
    names = list(dict.fromkeys(r["image"] for m in modes for r in by_mode[m]))
    if not names:
        raise ValueError("no records to draw")
    if len(names) > SHEET_MAX_ROWS:
        log.info("Grad-CAM sheet shows the first %d of %d images", SHEET_MAX_ROWS, len(names))
        names = names[:SHEET_MAX_ROWS]
    gap, label_h, head_h = 6, 24, 64 if title else 30
    width = 2 * len(modes) * (SHEET_CELL + gap) + (len(modes) - 1) * gap + gap
    row_h = label_h + SHEET_CELL + gap
    sheet = Image.new("RGB", (width, head_h + len(names) * row_h + gap), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((width // 2, 8), title, fill="black", anchor="mt", font=_font(18))
    col_x = [gap + i * (SHEET_CELL + gap) + (i // 2) * gap for i in range(2 * len(modes))]
    for i, mode in enumerate(modes):
        draw.text((col_x[2 * i] + SHEET_CELL // 2, head_h - 22), f"{mode}: model input", fill="black", anchor="mt", font=_font(14))
        draw.text((col_x[2 * i + 1] + SHEET_CELL // 2, head_h - 22), f"{mode}: Grad-CAM", fill="black", anchor="mt", font=_font(14))
    for row, name in enumerate(names):
        top = head_h + row * row_h
        true = next((lookup[m][name].get("true") for m in modes if name in lookup[m]), None)
        label = name if true is None else f"{name} (true: {true})"
        draw.text((gap, top + 4), _fit(draw, label, 2 * SHEET_CELL - 120), fill="black", font=_font(14))
        for i, mode in enumerate(modes):
            record = lookup[mode].get(name)
            if record is None or record.get("gradcam_overlay") is None:
                cells = [_cell(None, "not scored"), _cell(None, "")]
            else:
                cells = [_cell(record["preprocessed"]), _cell(record["gradcam_overlay"])]
                caption = f"{record['winner']} {record['confidence']:.2f}"
                colour = UNKNOWN if true is None else (RIGHT if record["winner"] == true else WRONG)
                draw.text((col_x[2 * i + 1] + SHEET_CELL, top + 4), caption, fill=colour, anchor="ra", font=_font(14))
            for cell, x in zip(cells, col_x[2 * i : 2 * i + 2], strict=True):
                sheet.paste(cell, (x, top + label_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, **PNG)
    log.debug("wrote %s", path)
    return path
