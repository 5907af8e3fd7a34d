"""The one way to build a face detector: from face settings as a run stores them.

``face_detector(mode, faces)`` gives the Haar cropper (``haar``) or the landmark aligner
(``aligned``) for the settings of a run's config section ``faces`` or of an exported model's
metadata (missing settings take the detector's defaults). :class:`FaceCropStep` applies one to
every image as it is decoded for training (``data.face_crop``): once per image, before the image
is shrunk and cached; with no face the whole image is kept, and the step counts faces found and
missed so the dataset can log them. It pickles as its factory (DataLoader workers of a streamed
dataset rebuild the cropper).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from research.faces.align import LandmarkAligner
from research.faces.haar import HaarFaceCropper
from research.faces.settings import ALIGN_SETTINGS, DETECTORS, HAAR_SETTINGS

FaceDetector = HaarFaceCropper | LandmarkAligner


def haar_cropper(faces: Mapping[str, Any] | None, *, fallback: bool | None = None) -> HaarFaceCropper:
    """The Haar cropper of ``faces`` settings (config ``faces``, or an exported model's metadata);
    missing settings take the cropper's defaults."""
    settings = {k: v for k, v in (faces or {}).items() if k in HAAR_SETTINGS}
    if fallback is not None:
        settings["fallback"] = fallback
    return HaarFaceCropper(**settings)


def landmark_aligner(faces: Mapping[str, Any] | None, *, fallback: bool | None = None) -> LandmarkAligner:
    """The landmark aligner of ``faces`` settings (config ``faces``, or an exported model's metadata);
    missing settings take the aligner's defaults. Raises AlignUnavailableError without the extra."""
    settings = {ALIGN_SETTINGS[k]: v for k, v in (faces or {}).items() if k in ALIGN_SETTINGS}
    if fallback is not None:
        settings["fallback"] = fallback
    return LandmarkAligner(**settings)


def face_detector(mode: str, faces: Mapping[str, Any] | None, *, fallback: bool | None = None) -> FaceDetector:
    """The detector of a face mode: ``haar`` or ``aligned`` (:data:`~research.faces.settings.DETECTORS`)."""
    if mode == "haar":
        return haar_cropper(faces, fallback=fallback)
    if mode == "aligned":
        return landmark_aligner(faces, fallback=fallback)
    raise ValueError(f"face mode {mode!r} has no detector; use one of {', '.join(DETECTORS)}")


def face_crop_step(mode: str, faces: Mapping[str, Any] | None) -> FaceCropStep | None:
    """The crop applied once to every decoded training and validation image (``data.face_crop``),
    always with the whole-image fallback; ``None`` for ``none``."""
    if mode == "none":
        return None
    return FaceCropStep(functools.partial(face_detector, mode, dict(faces or {}), fallback=True), label=mode)


class FaceCropStep:
    """``step(image, name) -> image``: the cropper's face crop, or the whole image when none is found.

    Args:
        factory: builds the cropper (called now, and again in each worker process).
        label: the crop's name in messages (``haar``, ``aligned``).
    """

    def __init__(self, factory: Callable[[], Callable[..., Any]], label: str) -> None:
        self.factory, self.label = factory, label
        self._setup()

    def _setup(self) -> None:
        self.cropper = self.factory()
        # Decode threads share the step; neither OpenCV's cascade nor dlib promises thread safety.
        self._lock = threading.Lock()
        self.found = 0
        self.missed = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory, "label": self.label}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.factory, self.label = state["factory"], state["label"]
        self._setup()

    def reset_counts(self) -> tuple[int, int]:
        """(found, missed) since the last reset, and start counting from zero."""
        with self._lock:
            counts = (self.found, self.missed)
            self.found = self.missed = 0
        return counts

    def __call__(self, image: np.ndarray, name: str = "") -> np.ndarray:
        with self._lock:
            crop = self.cropper(image, name=name)
            if crop.found:
                self.found += 1
            else:
                self.missed += 1
        return crop.image
