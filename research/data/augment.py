"""The one schema of augmentation: every magnitude, the named presets and their checks.

Kept free of albumentations so the config can validate ``augment.*`` at load time without
importing the image stack; :mod:`research.data.transforms` turns the parameters into ops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from research.errors import UserError


class AugmentError(UserError, ValueError):
    """An unknown preset or parameter, or a magnitude out of its range."""


@dataclass(frozen=True)
class AugmentParams:
    """Every augmentation magnitude. Limits are symmetric (+-); probabilities in [0, 1]."""

    hflip_p: float = 0.0
    rotate_limit: float = 0.0  # degrees
    shift_limit: float = 0.0  # fraction of the image side
    scale_limit: float = 0.0  # fraction: 0.1 -> zoom in [0.9, 1.1]
    affine_p: float = 0.0
    brightness_limit: float = 0.0
    contrast_limit: float = 0.0
    brightness_contrast_p: float = 0.0
    erasing_p: float = 0.0
    erasing_max_area: float = 0.1  # largest erased area as a fraction of the image
    noise_blur_p: float = 0.0


AUGMENT_PRESETS: dict[str, AugmentParams] = {
    "none": AugmentParams(),
    "light": AugmentParams(
        hflip_p=0.5, rotate_limit=8, shift_limit=0.04, scale_limit=0.05, affine_p=0.5,
        brightness_limit=0.1, contrast_limit=0.1, brightness_contrast_p=0.3,
    ),
    "medium": AugmentParams(
        hflip_p=0.5, rotate_limit=15, shift_limit=0.08, scale_limit=0.1, affine_p=0.7,
        brightness_limit=0.2, contrast_limit=0.2, brightness_contrast_p=0.5,
        erasing_p=0.25, erasing_max_area=0.1,
    ),
    "strong": AugmentParams(
        hflip_p=0.5, rotate_limit=20, shift_limit=0.1, scale_limit=0.15, affine_p=0.9,
        brightness_limit=0.3, contrast_limit=0.3, brightness_contrast_p=0.7,
        erasing_p=0.5, erasing_max_area=0.15, noise_blur_p=0.2,
    ),
}


def augment_fields() -> list[str]:
    """The names of every magnitude (the ``augment.*`` config keys besides ``preset``)."""
    return [f.name for f in fields(AugmentParams)]


def check_augment(params: AugmentParams) -> None:
    """Probabilities (``*_p``) in [0, 1], limits >= 0, ``erasing_max_area`` in (0, 1]."""
    for name, value in asdict(params).items():
        if name.endswith("_p"):
            ok, allowed = 0 <= value <= 1, "a probability in [0, 1]"
        elif name == "erasing_max_area":
            ok, allowed = 0 < value <= 1, "a fraction of the image in (0, 1]"
        elif name in ("shift_limit", "scale_limit"):
            ok, allowed = 0 <= value < 1, "a fraction in [0, 1)"
        elif name == "rotate_limit":
            ok, allowed = 0 <= value <= 180, "degrees in [0, 180]"
        else:
            ok, allowed = value >= 0, ">= 0"
        if not ok:
            raise AugmentError(f"augment.{name}={value} is out of range: {allowed}")


def resolve_augment(preset: str, **overrides: float | None) -> AugmentParams:
    """A preset with individual magnitudes replaced; ``None`` overrides keep the preset value."""
    if preset not in AUGMENT_PRESETS:
        raise AugmentError(f"unknown augmentation preset {preset!r}; choose one of {sorted(AUGMENT_PRESETS)}")
    known = set(augment_fields())
    unknown = set(overrides) - known
    if unknown:
        raise AugmentError(f"unknown augmentation parameters {sorted(unknown)}; known: {sorted(known)}")
    params = replace(AUGMENT_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    check_augment(params)
    return params
