"""The one transform factory: train augmentation and the deterministic eval preprocessing.

Both pipelines start the same way: resize so the longest side is ``image_size`` and pad
to a square with black borders. Padding (rather than centre-cropping or squashing) never
cuts off the chin or the brows, which carry much of the expression, and never distorts
the face's proportions; the course photos are square already, so it only matters for
new photos of other shapes. The eval pipeline is reused verbatim for validation, for
``evaluate`` and for new images in ``predict``.

Augmentations are the ones that keep a face a face with the same expression: horizontal
flip (expressions are near-symmetric), small rotation/shift/scale (head pose, framing),
brightness/contrast (lighting), random erasing (occlusion: hands, glasses) and mild
noise/blur (webcam quality). No vertical flips (upside-down faces do not occur), no hue
or saturation changes (most FER data are grayscale).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from research.data.augment import AugmentParams


def _resize_and_pad(image_size: int) -> list[A.BasicTransform]:
    return [
        A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(
            min_height=image_size, min_width=image_size, border_mode=cv2.BORDER_CONSTANT, fill=0
        ),
    ]


def _to_tensor(channels: int, mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values for {channels}-channel input, got {mean} / {std}")
    ops: list[A.BasicTransform] = []
    if channels == 1:
        ops.append(A.ToGray(num_output_channels=1, p=1.0))
    elif channels != 3:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    ops += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return ops


def build_eval_transform(
    image_size: int, *, channels: int = 3, mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    """Deterministic preprocessing: HxWx3 uint8 RGB -> float tensor (channels, image_size, image_size)."""
    return A.Compose(_resize_and_pad(image_size) + _to_tensor(channels, mean, std))


def build_train_transform(
    image_size: int,
    *,
    channels: int = 3,
    mean: Sequence[float],
    std: Sequence[float],
    augment: AugmentParams,
    seed: int | None = None,
) -> A.Compose:
    """Eval preprocessing with the face-safe augmentations of ``augment`` in between."""
    a = augment
    ops: list[A.BasicTransform] = _resize_and_pad(image_size)
    if a.hflip_p > 0:
        ops.append(A.HorizontalFlip(p=a.hflip_p))
    if a.affine_p > 0:
        ops.append(
            A.Affine(
                scale=(1 - a.scale_limit, 1 + a.scale_limit),
                translate_percent=(-a.shift_limit, a.shift_limit),
                rotate=(-a.rotate_limit, a.rotate_limit),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=a.affine_p,
            )
        )
    if a.brightness_contrast_p > 0:
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=a.brightness_limit, contrast_limit=a.contrast_limit, p=a.brightness_contrast_p
            )
        )
    if a.noise_blur_p > 0:
        ops.append(
            A.OneOf(
                [A.GaussNoise(std_range=(0.02, 0.06)), A.GaussianBlur(blur_limit=(3, 5))], p=a.noise_blur_p
            )
        )
    if a.erasing_p > 0:
        side = max(a.erasing_max_area, 1e-3) ** 0.5
        ops.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(side / 3, side),
                hole_width_range=(side / 3, side),
                fill=0,
                p=a.erasing_p,
            )
        )
    return A.Compose(ops + _to_tensor(channels, mean, std), seed=seed)
