"""Face-crop geometry shared by both detectors: the crop record, the square crop box, the detection
image (upscaled and padded) and the mapping of its boxes back to the photo, the whole-image fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from research.errors import UserError

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceCrop:
    """Result of cropping one image.

    Attributes:
        image: the crop, HxWx3 uint8 RGB; the whole image when no face was found and
            fallback is on.
        found: a face was detected.
        fallback: no face was found and the whole image is used.
        box: detection (x, y, w, h) in original pixels, kept for display; ``None`` if none.
        crop_box: (x0, y0, x1, y1) of the region actually taken (x1, y1 exclusive).
        n_faces: number of faces detected.
    """

    image: np.ndarray
    found: bool
    fallback: bool
    box: Box | None
    crop_box: Box
    n_faces: int


class NoFaceFoundError(UserError, ValueError):
    """No face was detected and fallback to the whole image is off."""


def as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) uint8 -> HxWx3 uint8 RGB (may share memory)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        dtype = getattr(image, "dtype", type(image).__name__)
        raise TypeError(f"expected a uint8 numpy image, got {dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")


def square_crop_box(box: Sequence[int], image_shape: Sequence[int], margin: float) -> Box:
    """Square (x0, y0, x1, y1) around a detection, clamped to the image.

    The side is ``max(w, h) * (1 + 2 * margin)`` centred on the box; a square that sticks
    out is shifted back inside, and shrunk to the image's shorter side if it still does
    not fit. x1 and y1 are exclusive.

    Args:
        box: detection (x, y, w, h) in pixels.
        image_shape: the image's shape, (H, W, ...).
        margin: extra fraction of the box side added on each side (>= 0).
    """
    x, y, w, h = (int(v) for v in box)
    height, width = int(image_shape[0]), int(image_shape[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be > 0, got {tuple(box)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image must be non-empty, got shape {tuple(image_shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = round(max(w, h) * (1.0 + 2.0 * margin))
    side = max(1, min(side, height, width))
    x0 = round(x + w / 2 - side / 2)
    y0 = round(y + h / 2 - side / 2)
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def draw_box(
    image: np.ndarray,
    box: Sequence[int] | None,
    color: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """Copy of ``image`` (as HxWx3 uint8 RGB) with the (x, y, w, h) rectangle drawn on it.

    ``box=None`` returns an unmarked copy, so callers need not special-case "no face".
    """
    out = as_rgb(image).copy()
    if box is None:
        return out
    x, y, w, h = (int(v) for v in box)
    thickness = max(1, round(min(out.shape[:2]) / 150))
    cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), color, thickness)
    return out


def whole_image(rgb: np.ndarray, name: str, *, fallback: bool, by: str = "", cls: type[FaceCrop] = FaceCrop) -> FaceCrop:
    """No face found: the whole image as a flagged crop of type ``cls``, or :class:`NoFaceFoundError`
    when ``fallback`` is off (``by`` names the detector in the message)."""
    height, width = rgb.shape[:2]
    if not fallback:
        raise NoFaceFoundError(
            f"no face found in {name or 'the image'} ({width}x{height} px){' by ' + by if by else ''}. "
            "Enable the whole-image fallback or score without cropping (--face raw)."
        )
    logger.debug("no face in %s; using the whole image", name or "image")
    return cls(image=rgb.copy(), found=False, fallback=True, box=None, crop_box=(0, 0, width, height), n_faces=0)


def upscale_and_pad(image: np.ndarray, upscale_to: int, pad: float) -> tuple[np.ndarray, float, int]:
    """The detection image: ``image`` upscaled so its longer side is ``upscale_to`` (never shrunk; 0 =
    as is), then padded by ``pad`` x its longer side of replicated edges. Returns it, the scale and the
    border in pixels, for :func:`box_to_source`. Tightly cropped or small photos defeat both detectors:
    their windows need context around the face and a minimum face size."""
    h, w = image.shape[:2]
    scale = max(1.0, upscale_to / max(h, w)) if upscale_to else 1.0
    work = np.ascontiguousarray(image)
    if scale > 1.0:
        work = cv2.resize(work, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    border = int(round(pad * max(work.shape[:2])))
    if border:
        work = cv2.copyMakeBorder(work, border, border, border, border, cv2.BORDER_REPLICATE)
    return work, scale, border


def box_to_source(
    x0: float, y0: float, x1: float, y1: float, *, scale: float, border: int, shape: Sequence[int]
) -> Box | None:
    """A box (corners) in detection-image pixels as (x, y, w, h) in the original image, clamped to it;
    ``None`` when less than 2 px is left."""
    h, w = shape[:2]
    sx0, sy0 = max(0, round((x0 - border) / scale)), max(0, round((y0 - border) / scale))
    sx1, sy1 = min(w, round((x1 - border) / scale)), min(h, round((y1 - border) / scale))
    if sx1 - sx0 < 2 or sy1 - sy0 < 2:
        return None
    return int(sx0), int(sy0), int(sx1 - sx0), int(sy1 - sy0)
