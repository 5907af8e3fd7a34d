"""Haar-cascade face detection and a square face crop clamped to the image.

New photos are rarely framed like the training faces; cropping the largest detected face
(with a margin) before the eval transform brings them closer. When no face is found the
whole image is used and the result says so (``fallback``), so a report can tell the two
cases apart.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

CASCADE_FILE = "haarcascade_frontalface_default.xml"

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


class NoFaceFoundError(ValueError):
    """No face was detected and fallback to the whole image is off."""


def _cascade_path() -> Path:
    """Locate the frontal-face cascade shipped with opencv-python."""
    data = getattr(cv2, "data", None)
    candidates = []
    if data is not None and getattr(data, "haarcascades", None):
        candidates.append(Path(data.haarcascades) / CASCADE_FILE)
    package_dir = Path(cv2.__file__).resolve().parent
    candidates.append(package_dir / "data" / CASCADE_FILE)
    for path in candidates:
        if path.is_file():
            return path
    found = sorted(package_dir.rglob(CASCADE_FILE))
    if found:
        return found[0]
    raise FileNotFoundError(
        f"Haar cascade {CASCADE_FILE} not found (looked in "
        f"{', '.join(str(p) for p in candidates)} and under {package_dir}). "
        f"OpenCV {cv2.__version__} does not ship it; install opencv-python-headless<5."
    )


@functools.cache
def load_cascade() -> cv2.CascadeClassifier:
    """The frontal-face cascade, loaded once per process."""
    classifier_type = getattr(cv2, "CascadeClassifier", None)
    if classifier_type is None:
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved Haar "
            "cascades out of the main package); install opencv-python-headless<5."
        )
    path = _cascade_path()
    cascade = classifier_type(str(path))
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load the Haar cascade at {path}")
    logger.debug("loaded Haar cascade %s", path)
    return cascade


def _as_rgb(image: np.ndarray) -> np.ndarray:
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
    out = _as_rgb(image).copy()
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


class HaarFaceCropper:
    """Detect faces with OpenCV's frontal-face Haar cascade and crop the largest one.

    Args:
        scale_factor: image pyramid step of ``detectMultiScale`` (> 1).
        min_neighbors: overlapping detections needed to keep a face (>= 0; higher = stricter).
        min_size: smallest face side in pixels (>= 1).
        margin: extra fraction of the face side added on each side of the crop (>= 0).
        fallback: with no face, return the whole image (True) or raise NoFaceFoundError.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
        margin: float = 0.15,
        fallback: bool = True,
        pad: float = 0.25,
        upscale_to: int = 240,
    ) -> None:
        if not scale_factor > 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if (
            isinstance(min_neighbors, bool)
            or int(min_neighbors) != min_neighbors
            or min_neighbors < 0
        ):
            raise ValueError(f"min_neighbors must be an integer >= 0, got {min_neighbors}")
        if isinstance(min_size, bool) or int(min_size) != min_size or min_size < 1:
            raise ValueError(f"min_size must be an integer >= 1 (pixels), got {min_size}")
        if not margin >= 0.0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if not 0.0 <= pad <= 1.0:
            raise ValueError(f"pad must be in [0, 1] (fraction of the longer side), got {pad}")
        if upscale_to < 0:
            raise ValueError(f"upscale_to must be >= 0 pixels (0 = never upscale), got {upscale_to}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.margin = float(margin)
        self.fallback = bool(fallback)
        self.pad = float(pad)
        self.upscale_to = int(upscale_to)
        self._cascade = load_cascade()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale_factor={self.scale_factor}, "
            f"min_neighbors={self.min_neighbors}, min_size={self.min_size}, "
            f"margin={self.margin}, fallback={self.fallback})"
        )

    def detect(self, image: np.ndarray) -> list[Box]:
        """All faces as (x, y, w, h) in pixels, largest area first."""
        rgb = _as_rgb(image)
        if min(rgb.shape[:2]) < self.min_size:
            return []
        gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY))
        # The cascade needs ~24 px of face and some context: upscale small images and pad the borders.
        gray, scale, border = upscale_and_pad(gray, self.upscale_to, self.pad)
        min_side = max(1, round(self.min_size * scale))
        faces = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        mapped = (box_to_source(fx, fy, fx + fw, fy + fh, scale=scale, border=border, shape=rgb.shape) for fx, fy, fw, fh in faces)
        boxes = [b for b in mapped if b is not None]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)

    def __call__(self, image: np.ndarray, name: str = "") -> FaceCrop:
        """Crop the largest face (square, with margin, inside the image).

        Args:
            image: HxW, HxWx1, HxWx3 (RGB) or HxWx4 uint8.
            name: file name used in messages.

        Raises:
            NoFaceFoundError: no face found and ``fallback`` is off.
        """
        rgb = _as_rgb(image)
        faces = self.detect(rgb)
        if not faces:
            return whole_image(rgb, name, fallback=self.fallback)
        box = faces[0]
        x0, y0, x1, y1 = square_crop_box(box, rgb.shape, self.margin)
        return FaceCrop(
            image=rgb[y0:y1, x0:x1].copy(),
            found=True,
            fallback=False,
            box=box,
            crop_box=(x0, y0, x1, y1),
            n_faces=len(faces),
        )

    def crop_all(self, image: np.ndarray) -> list[FaceCrop]:
        """Every detected face (not just the largest), largest first, each cropped like
        :meth:`__call__`; an empty list when there is none (no fallback to the whole image)."""
        rgb = _as_rgb(image)
        faces = self.detect(rgb)
        crops = []
        for box in faces:
            x0, y0, x1, y1 = square_crop_box(box, rgb.shape, self.margin)
            crops.append(
                FaceCrop(
                    image=rgb[y0:y1, x0:x1].copy(), found=True, fallback=False, box=box,
                    crop_box=(x0, y0, x1, y1), n_faces=len(faces),
                )
            )
        return crops
