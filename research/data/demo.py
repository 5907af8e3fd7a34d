"""SYNTHETIC demo dataset: drawn cartoon faces whose expression carries the emotion.

Everything this module produces is SYNTHETIC demo data, generated on the fly from a seed.
It lets the whole pipeline (train, sweep, predict, report) run offline and in tests; no
number measured on it says anything about real facial-expression recognition.

Each image is a grey face (ellipse, eyes, eyebrows, mouth, optional nose and hair) drawn
with OpenCV on a cluttered background. The class is encoded only in the expression
(mouth curve and opening, brow height and slant, eye opening); position, scale,
rotation (+-15 deg), tones, lighting gradient, clutter and noise vary at random, and
each sample shows its expression at a random intensity with per-parameter jitter, so
weak expressions of different classes overlap, as in real data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from research.data.classes import CANONICAL_CLASSES, SPANISH_NAMES

logger = logging.getLogger(__name__)

DEMO_CLASS_COUNTS: dict[str, int] = {
    "anger": 200,
    "disgust": 60,
    "fear": 100,
    "happiness": 380,
    "neutral": 260,
    "sadness": 220,
    "surprise": 180,
}
"""Default train images per canonical class (1,400 in all), imbalanced like FER2013."""

VALIDATION_FRACTION = 0.25
"""Validation images per class, as a fraction of the train count (same imbalance)."""

ENGLISH_NAMES: dict[str, str] = {
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "happiness": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "surprise": "surprise",
}

_SPLIT_STREAMS = {"train": 0, "validation": 1}
_NEW_IMAGE_STREAM = 2
# (width, height) of the "new photo" canvases: landscape, portrait and square.
_NEW_IMAGE_SIZES = ((160, 120), (120, 200), (200, 150), (144, 144), (128, 176))
# Drawing happens at >= this many pixels per side, then INTER_AREA down-sampling
# gives anti-aliased strokes even at 48x48.
_MIN_RENDER_SIDE = 256


@dataclass(frozen=True)
class _Expression:
    """Expression parameters in face units (face half-width = 1, y grows downwards)."""

    mouth_curve: float = 0.0  # how far the mouth centre sits below its corners (>0 smile)
    mouth_open: float = 0.0  # gap between the lips
    mouth_width: float = 0.36  # half-width of the mouth
    mouth_wave: float = 0.0  # amplitude of a sideways wave along the lips
    mouth_tilt: float = 0.0  # one corner higher than the other
    brow_raise: float = 0.0  # brows moved up (>0) or down (<0)
    brow_slant: float = 0.0  # inner ends raised (>0, sad/fear) or lowered (<0, anger)
    eye_open: float = 0.11  # half-height of the eye opening


_NEUTRAL = _Expression()
_CLASS_EXPRESSIONS: dict[str, _Expression] = {
    "anger": _Expression(
        mouth_curve=-0.03, mouth_width=0.26, brow_raise=-0.1, brow_slant=-0.24, eye_open=0.08
    ),
    "disgust": _Expression(
        mouth_curve=-0.06,
        mouth_open=0.02,
        mouth_width=0.36,
        mouth_wave=0.06,
        mouth_tilt=0.13,
        brow_raise=-0.07,
        brow_slant=-0.08,
        eye_open=0.05,
    ),
    "fear": _Expression(
        mouth_curve=-0.05,
        mouth_open=0.12,
        mouth_width=0.46,
        brow_raise=0.12,
        brow_slant=0.14,
        eye_open=0.17,
    ),
    "happiness": _Expression(mouth_curve=0.26, mouth_open=0.16, mouth_width=0.48, eye_open=0.09),
    "neutral": _NEUTRAL,
    "sadness": _Expression(
        mouth_curve=-0.2, mouth_width=0.36, brow_raise=0.02, brow_slant=0.18, eye_open=0.09
    ),
    "surprise": _Expression(
        mouth_open=0.34, mouth_width=0.2, brow_raise=0.2, brow_slant=0.02, eye_open=0.18
    ),
}
# Per-sample Gaussian jitter (face units) added after intensity scaling.
_JITTER = _Expression(
    mouth_curve=0.035,
    mouth_open=0.025,
    mouth_width=0.04,
    mouth_wave=0.012,
    mouth_tilt=0.025,
    brow_raise=0.035,
    brow_slant=0.035,
    eye_open=0.022,
)
_INTENSITY_RANGE = (0.5, 1.2)


def _sample_expression(label: int, rng: np.random.Generator) -> _Expression:
    """Neutral + intensity * (class - neutral) + jitter; weak samples look nearly neutral."""
    target = _CLASS_EXPRESSIONS[CANONICAL_CLASSES[label]]
    intensity = rng.uniform(*_INTENSITY_RANGE)
    values = {}
    for field in fields(_Expression):
        base = getattr(_NEUTRAL, field.name)
        delta = getattr(target, field.name) - base
        values[field.name] = (
            base + intensity * delta + rng.normal(0.0, getattr(_JITTER, field.name))
        )
    # Which mouth corner the tilt lifts is random (disgust has the largest tilt).
    values["mouth_tilt"] *= rng.choice((-1.0, 1.0))
    values["mouth_open"] = max(values["mouth_open"], 0.0)
    values["mouth_width"] = max(values["mouth_width"], 0.12)
    values["eye_open"] = float(np.clip(values["eye_open"], 0.025, 0.22))
    return _Expression(**values)


class _Canvas:
    """Grey float canvas plus the face-units -> pixel transform used to draw on it."""

    _SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertex positions

    def __init__(self, height: int, width: int, fill: float) -> None:
        self.image = np.full((height, width), fill, dtype=np.float32)
        self.matrix = np.eye(2, 3, dtype=np.float64)
        self.unit = 1.0  # pixels per face unit

    def set_pose(self, centre: tuple[float, float], unit: float, angle_deg: float) -> None:
        """Face centre in pixels, face half-width in pixels, in-plane rotation."""
        theta = math.radians(angle_deg)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        self.matrix = np.hstack([unit * rot, np.array(centre, dtype=np.float64)[:, None]])
        self.unit = unit

    def _pixels(self, points: np.ndarray) -> np.ndarray:
        xy = points @ self.matrix[:, :2].T + self.matrix[:, 2]
        return np.round(xy * (1 << self._SHIFT)).astype(np.int32)

    def fill(self, points: np.ndarray, tone: float) -> None:
        cv2.fillPoly(
            self.image, [self._pixels(points)], float(tone), cv2.LINE_AA, shift=self._SHIFT
        )

    def line(self, points: np.ndarray, tone: float, thickness: float, closed: bool = False) -> None:
        width = max(1, round(thickness * self.unit))
        cv2.polylines(
            self.image,
            [self._pixels(points)],
            closed,
            float(tone),
            width,
            cv2.LINE_AA,
            shift=self._SHIFT,
        )


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _draw_background(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Low-frequency blotches plus random lines, rings and boxes (clutter)."""
    h, w = canvas.image.shape
    coarse = rng.normal(0.0, 1.0, size=(4, 4)).astype(np.float32)
    canvas.image += rng.uniform(5.0, 30.0) * cv2.resize(
        coarse, (w, h), interpolation=cv2.INTER_CUBIC
    )
    side = min(h, w)
    for _ in range(rng.integers(2, 9)):
        tone = float(rng.uniform(20.0, 235.0))
        thickness = int(rng.integers(1, max(2, side // 40)))
        kind = rng.integers(3)
        x0, x1 = rng.uniform(0, w, size=2)
        y0, y1 = rng.uniform(0, h, size=2)
        if kind == 0:
            cv2.line(
                canvas.image, (int(x0), int(y0)), (int(x1), int(y1)), tone, thickness, cv2.LINE_AA
            )
        elif kind == 1:
            radius = int(rng.uniform(0.05, 0.3) * side)
            cv2.circle(canvas.image, (int(x0), int(y0)), radius, tone, thickness, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas.image, (int(x0), int(y0)), (int(x1), int(y1)), tone, -1)


def _draw_face(canvas: _Canvas, expr: _Expression, rng: np.random.Generator) -> None:
    """Draw hair, face, brows, eyes, nose and mouth in face units on the posed canvas."""
    skin = float(rng.uniform(95.0, 215.0))
    dark = skin * float(rng.uniform(0.1, 0.3))
    aspect = float(rng.uniform(1.15, 1.4))

    if rng.random() < 0.6:
        hair_tone = (
            float(rng.uniform(15.0, 90.0)) if rng.random() < 0.7 else float(rng.uniform(170, 240))
        )
        canvas.fill(_ellipse(0.0, -0.12 * aspect, 1.1, aspect * 1.05), hair_tone)
    canvas.fill(_ellipse(0.0, 0.0, 1.0, aspect), skin)
    canvas.line(_ellipse(0.0, 0.0, 1.0, aspect), skin * 0.75, 0.04, closed=True)

    eye_y = -0.18 + rng.normal(0.0, 0.03)
    eye_x = 0.38 + rng.normal(0.0, 0.025)
    eye_w = 0.17 * float(rng.uniform(0.85, 1.15))
    sclera = min(255.0, skin + float(rng.uniform(25.0, 70.0)))
    brow_y = eye_y - 0.27 - expr.brow_raise
    brow_thickness = float(rng.uniform(0.08, 0.13))
    gaze = rng.normal(0.0, 0.03, size=2)
    for side in (-1.0, 1.0):
        eye = _ellipse(side * eye_x, eye_y, eye_w, expr.eye_open)
        canvas.fill(eye, sclera)
        pupil_r = 0.07
        canvas.fill(
            _ellipse(
                side * eye_x + gaze[0], eye_y + gaze[1], pupil_r, min(pupil_r, expr.eye_open * 0.95)
            ),
            dark,
        )
        canvas.line(eye, dark, 0.025, closed=True)
        # Brow: inner end, arched middle, outer end; the slant moves the inner end.
        brow = np.array(
            [
                [side * 0.12, brow_y - expr.brow_slant],
                [side * 0.36, brow_y - 0.04 - 0.4 * expr.brow_slant],
                [side * 0.62, brow_y + 0.02],
            ]
        )
        canvas.line(brow, dark, brow_thickness)

    if rng.random() < 0.7:
        nose = np.array([[0.0, eye_y + 0.1], [-0.07, 0.25], [0.05, 0.29]])
        canvas.line(nose, skin * 0.6, 0.03)

    _draw_mouth(canvas, expr, skin, dark, rng)


def _draw_mouth(
    canvas: _Canvas, expr: _Expression, skin: float, dark: float, rng: np.random.Generator
) -> None:
    mouth_y = 0.55 + rng.normal(0.0, 0.03)
    t = np.linspace(-1.0, 1.0, 33)
    x = expr.mouth_width * t
    phase = rng.uniform(0.0, 2.0 * np.pi)
    centre = (
        mouth_y
        + expr.mouth_curve * (1.0 - t**2)
        + expr.mouth_wave * np.sin(2.5 * np.pi * t + phase)
        + expr.mouth_tilt * t
    )
    lip_tone = skin * 0.55
    lip_thickness = float(rng.uniform(0.05, 0.08))
    if expr.mouth_open < 0.02:
        canvas.line(np.stack([x, centre], axis=1), lip_tone * 0.7, lip_thickness)
        return
    opening = np.sqrt(1.0 - t**2)
    upper = centre - 0.3 * expr.mouth_open * opening
    lower = centre + 0.7 * expr.mouth_open * opening
    outline = np.concatenate([np.stack([x, upper], axis=1), np.stack([x, lower], axis=1)[::-1]])
    canvas.fill(outline, dark * 0.6)
    if expr.mouth_open > 0.06 and expr.mouth_curve > 0.05:
        teeth_lower = upper + 0.3 * (lower - upper)
        teeth = np.concatenate(
            [np.stack([x, upper], axis=1), np.stack([x, teeth_lower], axis=1)[::-1]]
        )
        canvas.fill(teeth, min(255.0, skin + 40.0))
    canvas.line(outline, lip_tone, lip_thickness * 0.8, closed=True)


def _finish(image: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Lighting gradient, blur, down-sampling and sensor noise -> HxWx3 uint8."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(direction) * (xx / w - 0.5) + np.sin(direction) * (yy / h - 0.5)).astype(
        np.float32
    )
    image = image * (1.0 + rng.uniform(0.0, 0.8) * ramp) * rng.uniform(0.75, 1.2)
    sigma = rng.uniform(0.0, 0.8) * h / out_hw[0]
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = cv2.resize(image, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
    image = image + rng.normal(0.0, rng.uniform(2.0, 12.0), size=image.shape).astype(np.float32)
    gray = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _render_scene(
    label: int,
    rng: np.random.Generator,
    out_hw: tuple[int, int],
    centre: tuple[float, float],
    face_half_width: float,
) -> np.ndarray:
    """One face of class ``label`` on clutter; centre and half-width in output pixels."""
    if not 0 <= label < len(CANONICAL_CLASSES):
        raise ValueError(f"label must be in [0, {len(CANONICAL_CLASSES) - 1}], got {label}")
    ss = max(1, math.ceil(_MIN_RENDER_SIDE / min(out_hw)))
    canvas = _Canvas(out_hw[0] * ss, out_hw[1] * ss, fill=float(rng.uniform(30.0, 225.0)))
    _draw_background(canvas, rng)
    angle = float(rng.uniform(-15.0, 15.0))
    canvas.set_pose((centre[0] * ss, centre[1] * ss), face_half_width * ss, angle)
    _draw_face(canvas, _sample_expression(label, rng), rng)
    return _finish(canvas.image, out_hw, rng)


def render_demo_face(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One synthetic face of class index ``label`` (CANONICAL_CLASSES order).

    Returns:
        (size, size, 3) uint8 RGB, grey (three equal channels).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    half_width = size * 0.36 * rng.uniform(0.9, 1.08)
    centre = (size * (0.5 + rng.uniform(-0.08, 0.08)), size * (0.5 + rng.uniform(-0.08, 0.08)))
    return _render_scene(label, rng, (size, size), centre, half_width)


def demo_split_counts(split: str, scale: float = 1.0) -> dict[str, int]:
    """Images per canonical class in a demo split; ``scale`` multiplies them (min 1 each)."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_STREAMS)}, got {split!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    factor = scale * (1.0 if split == "train" else VALIDATION_FRACTION)
    return {name: max(1, round(n * factor)) for name, n in DEMO_CLASS_COUNTS.items()}


def make_demo_split(
    split: str, size: int = 64, seed: int = 0, scale: float = 1.0
) -> tuple[list[np.ndarray], list[int]]:
    """Generate a whole demo split in class order.

    Each (seed, split, class) has its own random stream, so train and validation never
    share an image and a smaller ``scale`` yields a prefix of the larger set's class.

    Returns:
        images: (size, size, 3) uint8 RGB arrays; labels: CANONICAL_CLASSES indices.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    for name, count in demo_split_counts(split, scale).items():
        label = CANONICAL_CLASSES.index(name)
        rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], label])
        images.extend(render_demo_face(label, rng, size) for _ in range(count))
        labels.extend([label] * count)
    return images, labels


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_demo_dataset(
    root: Path,
    size: int = 64,
    seed: int = 0,
    scale: float = 1.0,
    folder_names: Literal["spanish", "english"] = "spanish",
) -> Path:
    """Write the demo splits as ``root/{train,validation}/<class folder>/<k>.png``.

    Returns:
        ``root``.
    """
    names = {"spanish": SPANISH_NAMES, "english": ENGLISH_NAMES}.get(folder_names)
    if names is None:
        raise ValueError(f"folder_names must be 'spanish' or 'english', got {folder_names!r}")
    root = Path(root)
    for split in _SPLIT_STREAMS:
        images, labels = make_demo_split(split, size=size, seed=seed, scale=scale)
        per_class: dict[int, int] = {}
        for image, label in zip(images, labels, strict=True):
            folder = root / split / names[CANONICAL_CLASSES[label]]
            folder.mkdir(parents=True, exist_ok=True)
            k = per_class.get(label, 0)
            per_class[label] = k + 1
            _write_png(folder / f"{k}.png", image)
        logger.info("wrote %d synthetic demo images to %s", len(images), root / split)
    return root


def write_demo_new_images(out_dir: Path, per_class: int = 2, seed: int = 123) -> list[Path]:
    """Write "new photos": one demo face per file on a larger canvas of varying aspect ratio.

    Files are ``out_dir/<canonical class>_<k>.png`` with k = 1..per_class, so the true
    label can be read from the name.

    Returns:
        The written paths, in class order.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, _NEW_IMAGE_STREAM])
    paths: list[Path] = []
    for label, name in enumerate(CANONICAL_CLASSES):
        for k in range(1, per_class + 1):
            width, height = _NEW_IMAGE_SIZES[rng.integers(len(_NEW_IMAGE_SIZES))]
            half_width = min(width, height) * rng.uniform(0.22, 0.3)
            # Keep the whole face (half-height up to ~1.4 half-widths) inside the canvas.
            margin_x, margin_y = 1.1 * half_width, 1.5 * half_width
            centre = (
                rng.uniform(margin_x, max(margin_x, width - margin_x)),
                rng.uniform(margin_y, max(margin_y, height - margin_y)),
            )
            image = _render_scene(label, rng, (height, width), centre, half_width)
            path = out_dir / f"{name}_{k}.png"
            _write_png(path, image)
            paths.append(path)
    return paths
