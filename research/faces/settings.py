"""The face settings and the face-mode vocabulary: the one place both are written down.

The config section ``faces`` (:class:`research.config.FacesConfig`), the Haar cropper and the
landmark aligner all check their values against :data:`RANGES`, so a value the config accepts is
one the detectors accept, with the same words in the message. :data:`MODES` is the vocabulary of
``predict --face``, ``evaluate --face`` and ``data.face_crop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DETECTORS = ("haar", "aligned")  # face modes that run a face detector
SINGLE_MODES = ("raw", *DETECTORS)  # one way each of showing a photo to the model: whole, Haar crop, aligned crop
# predict --face: a single mode, or "both" (raw + haar) and "all" (raw + haar + aligned) side by side
MODES: dict[str, tuple[str, ...]] = {
    **{mode: (mode,) for mode in SINGLE_MODES}, "both": ("raw", "haar"), "all": ("raw", *DETECTORS),
}
MODE_ALIASES = {"none": "raw"}  # the old name of raw
FACE_CROP_CHOICES = ("none", *DETECTORS)  # data.face_crop: crop training images as they are decoded


def _whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and int(value) == value


# faces.<key> -> (check, the allowed values in words)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scale_factor": (lambda v: 1 < v <= 2, "in (1, 2]"),
    "min_neighbors": (lambda v: _whole(v) and v >= 0, "an integer >= 0"),
    "min_size": (lambda v: _whole(v) and v >= 1, "an integer >= 1 pixel"),
    "margin": (lambda v: 0 <= v <= 1, "a fraction of the face side in [0, 1]"),
    "pad": (lambda v: 0 <= v <= 1, "a fraction of the longer side in [0, 1]"),
    "upscale_to": (lambda v: _whole(v) and v >= 0, "an integer >= 0 pixels (0 = never upscale)"),
    "align_eye_distance": (lambda v: 0.1 <= v <= 0.8, "a fraction of the crop side in [0.1, 0.8]"),
    "align_eye_y": (lambda v: 0.1 <= v <= 0.9, "a fraction of the crop side in [0.1, 0.9]"),
    "align_upsample": (lambda v: _whole(v) and 0 <= v <= 3, "an integer in [0, 3]"),
}
HAAR_SETTINGS = ("scale_factor", "min_neighbors", "min_size", "margin", "pad", "upscale_to", "fallback")
# faces.<key> -> LandmarkAligner argument; pad, upscale_to and fallback are shared with the Haar cropper
ALIGN_SETTINGS = {
    "align_eye_distance": "eye_distance", "align_eye_y": "eye_y", "align_upsample": "upsample",
    "pad": "pad", "upscale_to": "upscale_to", "fallback": "fallback",
}


def in_range(key: str, value: Any) -> bool:
    """Whether ``value`` is allowed for ``faces.<key>``."""
    check, _ = RANGES[key]
    try:
        return bool(check(value))
    except TypeError:  # a string or None where a number belongs
        return False


def check_setting(key: str, value: Any, *, name: str | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` (default ``key``) and the allowed values when ``value`` is out of range."""
    if not in_range(key, value):
        raise ValueError(f"{name or key} must be {RANGES[key][1]}, got {value!r}")


def check_haar_settings(**settings: Any) -> None:
    """The Haar cropper's arguments (:data:`HAAR_SETTINGS` without ``fallback``)."""
    for key, value in settings.items():
        check_setting(key, value)


def check_align_settings(**arguments: Any) -> None:
    """The landmark aligner's arguments, by their argument names (``eye_distance``, ``eye_y``, ...)."""
    keys = {arg: key for key, arg in ALIGN_SETTINGS.items()}
    for name, value in arguments.items():
        check_setting(keys[name], value, name=name)


def resolve_mode(value: str) -> str:
    """A ``--face`` value with its old spelling resolved (``none`` -> ``raw``)."""
    return MODE_ALIASES.get(value, value)
