"""Landmark face alignment: dlib's HOG face detector, 5-point landmarks, eyes levelled.

A second face pipeline beside the Haar crop (:mod:`research.faces.haar`). The most confident face is
found with dlib's frontal HOG detector; the 5-point shape predictor (CC0, shipped in the
``face_recognition_models`` package) gives two corners of each eye and the base of the
nose. The image is rotated about the eyes' midpoint so the eyes are level, scaled so the
eye centres lie ``eye_distance`` of the crop side apart, and cropped square with the
eyes' midpoint centred horizontally at ``eye_y`` of the side from the top. The crop keeps
the photo's own resolution (the eval transform resizes it later).

dlib and the model file come with the optional extra: ``poetry install --extras align``.
Without them :func:`check_available` raises :class:`AlignUnavailableError`, which the CLI
turns into one line and exit code 2.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from research.errors import UserError
from research.faces.geometry import FaceCrop, as_rgb, box_to_source, upscale_and_pad, whole_image
from research.faces.settings import check_align_settings

logger = logging.getLogger(__name__)

LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"
INSTALL_HINT = "poetry install --extras align"
# dlib's 5-point model: 0-1 corners of the eye on the image's right, 2-3 of the eye on its left, 4 the nose.
RIGHT_EYE, LEFT_EYE = (0, 1), (2, 3)


class AlignUnavailableError(UserError, RuntimeError):
    """dlib or the 5-point landmark model is not installed (the optional ``align`` extra)."""


def _landmark_model_path() -> Path:
    # face_recognition_models' __init__ imports pkg_resources, which may be absent: find the
    # package's folder without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "models" / LANDMARK_MODEL
        if path.is_file():
            return path
    raise AlignUnavailableError(
        f"face alignment needs the 5-point landmark model {LANDMARK_MODEL} (package face_recognition_models), "
        f"which is not installed; run `{INSTALL_HINT}`, or use the Haar crop (haar) instead"
    )


def check_available() -> Path:
    """Raise :class:`AlignUnavailableError` unless dlib and the landmark model are installed;
    returns the model file. Cheap: called when a config or a command asks for alignment."""
    try:
        importlib.import_module("dlib")
    except ImportError:
        raise AlignUnavailableError(
            f"face alignment needs dlib, which is not installed; run `{INSTALL_HINT}`, "
            "or use the Haar crop (haar) instead"
        ) from None
    return _landmark_model_path()


@functools.cache
def _load_models() -> tuple[Any, Any]:
    """dlib's HOG frontal-face detector and the 5-point shape predictor, loaded once per process."""
    path = check_available()
    import dlib

    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as err:  # dlib's deserialisation error: a truncated or overwritten file
        raise AlignUnavailableError(
            f"the landmark model {path} is damaged ({err}); reinstall it with "
            "`poetry run pip install --force-reinstall --no-deps face_recognition_models`, or use the Haar crop (haar)"
        ) from None
    logger.debug("loaded dlib %s HOG detector and %s", getattr(dlib, "__version__", "?"), path)
    return dlib.get_frontal_face_detector(), predictor


@dataclass(frozen=True)
class AlignedCrop(FaceCrop):
    """A :class:`~research.faces.FaceCrop` from the aligner, with the geometry that made it.

    Attributes:
        landmarks: the 5 landmarks, (5, 2) float (x, y) in original pixels; ``None`` without a face.
        matrix: the 2x3 affine map from original pixels to crop pixels; ``None`` without a face.
    """

    landmarks: np.ndarray | None = None
    matrix: np.ndarray | None = None


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) eye centres in image coordinates from dlib's 5 points, (5, 2) -> two (2,)."""
    points = np.asarray(landmarks, dtype=np.float64)
    return points[list(LEFT_EYE)].mean(axis=0), points[list(RIGHT_EYE)].mean(axis=0)


def alignment_matrix(left_eye: np.ndarray, right_eye: np.ndarray, *, eye_distance: float, eye_y: float) -> tuple[np.ndarray, int]:
    """The 2x3 similarity transform that levels the eyes and the crop side in pixels.

    The side is ``|right - left| / eye_distance`` (the photo's own scale); the eyes' midpoint
    maps to ``(side / 2, eye_y * side)``.
    """
    left, right = np.asarray(left_eye, np.float64), np.asarray(right_eye, np.float64)
    dx, dy = right - left
    distance = float(np.hypot(dx, dy))
    if distance <= 0:
        raise ValueError("the two eye centres coincide")
    side = max(2, round(distance / eye_distance))
    angle = np.degrees(np.arctan2(dy, dx))
    centre = (left + right) / 2
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), side * eye_distance / distance)
    matrix[:, 2] += (side / 2 - centre[0], eye_y * side - centre[1])
    return matrix, side


class LandmarkAligner:
    """Detect the most confident face with dlib's HOG detector and crop it with the eyes levelled.

    Called like :class:`~research.faces.HaarFaceCropper` (``aligner(image, name) -> FaceCrop``).

    Args:
        eye_distance: distance between the eye centres as a fraction of the crop side (0 < d < 1;
            smaller keeps more border around the face).
        eye_y: height of the eyes' midpoint below the crop's top edge, fraction of the side.
        upsample: dlib's detector upsampling passes (each doubles the image; finds faces of
            ~40 px instead of ~80 px at 4x the time).
        pad: border added before detection (replicated edges, fraction of the longer side): finds
            tightly cropped faces, as in the Haar path.
        upscale_to: small images are upscaled to this longer side before detection (0 = never).
        fallback: with no face, return the whole image (True) or raise NoFaceFoundError.
    """

    def __init__(
        self,
        eye_distance: float = 0.32,
        eye_y: float = 0.4,
        upsample: int = 0,
        pad: float = 0.25,
        upscale_to: int = 240,
        fallback: bool = True,
    ) -> None:
        check_align_settings(eye_distance=eye_distance, eye_y=eye_y, upsample=upsample, pad=pad, upscale_to=upscale_to)
        self.eye_distance, self.eye_y = float(eye_distance), float(eye_y)
        self.upsample, self.pad, self.upscale_to = int(upsample), float(pad), int(upscale_to)
        self.fallback = bool(fallback)
        check_available()  # every time: the models below are cached for the process
        self._detector, self._predictor = _load_models()
        # dlib's objects are not documented as thread-safe; decode threads share one aligner.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eye_distance={self.eye_distance}, eye_y={self.eye_y}, "
            f"upsample={self.upsample}, fallback={self.fallback})"
        )

    def _detect(self, rgb: np.ndarray) -> tuple[list[tuple[int, int, int, int]], list[Any], np.ndarray, float, int]:
        """Boxes (x, y, w, h) in original pixels (highest detector score first), their dlib
        rectangles, and the detection image, its scale and border (the landmarks run on the same pixels)."""
        work, scale, border = upscale_and_pad(rgb, self.upscale_to, self.pad)
        with self._lock:
            rects, scores, _ = self._detector.run(work, self.upsample, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = box_to_source(
                rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, scale=scale, border=border, shape=rgb.shape
            )
            if box is not None:
                found.append((box, float(score), rect))
        # By score, not area: HOG false positives (a badge, a pattern) can be as large as the face.
        found.sort(key=lambda f: f[1], reverse=True)
        return [f[0] for f in found], [f[2] for f in found], work, scale, border

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """All faces as (x, y, w, h) in pixels, most confident first."""
        return self._detect(as_rgb(image))[0]

    def __call__(self, image: np.ndarray, name: str = "") -> AlignedCrop:
        """Align and crop the most confident face.

        Args:
            image: HxW, HxWx1, HxWx3 (RGB) or HxWx4 uint8.
            name: file name used in messages.

        Raises:
            NoFaceFoundError: no face found and ``fallback`` is off.
        """
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        boxes, rects, work, scale, border = self._detect(rgb)
        if not boxes:
            return whole_image(rgb, name, fallback=self.fallback, by="the landmark aligner", cls=AlignedCrop)
        with self._lock:
            shape = self._predictor(work, rects[0])
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        landmarks = (points - border) / scale
        left, right = eye_centres(landmarks)
        matrix, side = alignment_matrix(left, right, eye_distance=self.eye_distance, eye_y=self.eye_y)
        crop = cv2.warpAffine(
            np.ascontiguousarray(rgb), matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return AlignedCrop(
            image=crop, found=True, fallback=False, box=boxes[0], crop_box=_source_bounds(matrix, side, width, height),
            n_faces=len(boxes), landmarks=landmarks, matrix=matrix,
        )


def _source_bounds(matrix: np.ndarray, side: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the original pixels the rotated square covers, clamped to the image."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], dtype=np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    return (int(max(0, x0)), int(max(0, y0)), int(min(width, x1)), int(min(height, y1)))
