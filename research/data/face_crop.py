"""``data.face_crop``: a face cropper applied to every image as it is decoded for training.

The cropper (Haar or landmark-aligned, built by :func:`research.builders.dataset_face_crop`)
runs once per image in the decode pass, before the image is shrunk and cached; with no face
the whole image is kept. The step counts faces found and missed so the dataset can log them.
It pickles as its factory (DataLoader workers of a streamed dataset rebuild the cropper).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np


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
