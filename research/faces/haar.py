"""Haar-cascade face detection (OpenCV's frontal-face cascade) and a square crop of the largest face.

New photos are rarely framed like the training faces; cropping the largest detected face
(with a margin) before the eval transform brings them closer. When no face is found the
whole image is used and the result says so (``fallback``), so a report can tell the two
cases apart. The geometry (crop box, detection image, fallback) is :mod:`research.faces.geometry`;
the settings' ranges are :mod:`research.faces.settings`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import numpy as np

from research.errors import InputFileError
from research.faces.geometry import (
    Box,
    FaceCrop,
    as_rgb,
    box_to_source,
    square_crop_box,
    upscale_and_pad,
    whole_image,
)
from research.faces.settings import check_haar_settings

logger = logging.getLogger(__name__)

CASCADE_FILE = "haarcascade_frontalface_default.xml"


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
    raise InputFileError(
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
        check_haar_settings(
            scale_factor=scale_factor, min_neighbors=min_neighbors, min_size=min_size, margin=margin, pad=pad,
            upscale_to=upscale_to,
        )
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
        rgb = as_rgb(image)
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
        rgb = as_rgb(image)
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
        rgb = as_rgb(image)
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
