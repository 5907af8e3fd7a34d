"""Haar face crop: detection on a real photo, fallback, clamping at borders, input forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from research.faces.geometry import FaceCrop, NoFaceFoundError, draw_box, square_crop_box
from research.faces.haar import HaarFaceCropper, load_cascade
from tests.conftest import face_photo


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return face_photo()  # 600x512x3 uint8 RGB, one frontal face


@pytest.fixture(scope="module")
def cropper() -> HaarFaceCropper:
    return HaarFaceCropper()


def _contains(crop_box: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = crop_box
    x, y, w, h = box
    return x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1


def _assert_square_inside(crop_box: tuple[int, int, int, int], height: int, width: int) -> None:
    x0, y0, x1, y1 = crop_box
    assert x1 - x0 == y1 - y0 > 0
    assert 0 <= x0 < x1 <= width
    assert 0 <= y0 < y1 <= height


def test_finds_the_face_in_a_portrait(cropper, portrait) -> None:
    result = cropper(portrait, name="portrait.png")
    assert isinstance(result, FaceCrop)
    assert result.found and not result.fallback
    assert result.n_faces >= 1
    assert result.box is not None
    x, y, w, h = result.box
    # The face sits in the upper middle of the photo.
    assert 100 < x + w / 2 < 320 and 50 < y + h / 2 < 250 and w > 50
    assert _contains(result.crop_box, result.box)
    _assert_square_inside(result.crop_box, *portrait.shape[:2])
    x0, y0, x1, y1 = result.crop_box
    assert np.array_equal(result.image, portrait[y0:y1, x0:x1])
    assert result.image.shape == (y1 - y0, x1 - x0, 3) and result.image.dtype == np.uint8


def test_detect_sorts_largest_first(cropper, portrait) -> None:
    faces = cropper.detect(portrait)
    areas = [w * h for _, _, w, h in faces]
    assert faces and areas == sorted(areas, reverse=True)


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_no_face_falls_back_to_whole_image(cropper, kind) -> None:
    rng = np.random.default_rng(0)
    image = (
        rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
        if kind == "noise"
        else np.full((120, 160, 3), 128, dtype=np.uint8)
    )
    result = cropper(image)
    assert not result.found and result.fallback
    assert result.box is None and result.n_faces == 0
    assert result.crop_box == (0, 0, 160, 120)
    assert np.array_equal(result.image, image)
    assert result.image is not image


def test_no_face_without_fallback_raises() -> None:
    strict = HaarFaceCropper(fallback=False)
    with pytest.raises(NoFaceFoundError, match=r"blank\.jpg.*--face raw"):
        strict(np.zeros((100, 100, 3), dtype=np.uint8), name="blank.jpg")


def test_no_face_error_is_a_value_error() -> None:
    assert issubclass(NoFaceFoundError, ValueError)


@pytest.mark.parametrize(
    "box",
    [
        (0, 40, 30, 30),  # left border
        (170, 40, 30, 30),  # right border
        (80, 0, 30, 30),  # top border
        (80, 90, 30, 30),  # bottom border
        (0, 0, 25, 25),  # top-left corner
        (175, 0, 25, 25),  # top-right corner
        (0, 95, 25, 25),  # bottom-left corner
        (175, 95, 25, 25),  # bottom-right corner
        (-5, -5, 20, 20),  # detection poking outside
    ],
)
def test_square_crop_box_is_clamped_inside(box) -> None:
    height, width = 120, 200
    crop = square_crop_box(box, (height, width, 3), margin=0.5)
    _assert_square_inside(crop, height, width)
    x, y, w, h = box
    assert crop[2] - crop[0] == round(max(w, h) * 2.0)  # shifted, not shrunk
    clipped = (max(x, 0), max(y, 0), w + min(x, 0), h + min(y, 0))
    assert _contains(crop, clipped)


def test_square_crop_box_centres_on_the_face() -> None:
    assert square_crop_box((40, 40, 20, 20), (100, 100), margin=0.0) == (40, 40, 60, 60)
    assert square_crop_box((40, 40, 20, 20), (100, 100), margin=0.5) == (30, 30, 70, 70)
    # Non-square detections get a square side of the longer edge.
    assert square_crop_box((40, 30, 20, 40), (100, 100), margin=0.0) == (30, 30, 70, 70)


@pytest.mark.parametrize("shape", [(60, 300), (300, 60), (50, 50)])
def test_square_crop_box_shrinks_to_the_short_side(shape) -> None:
    height, width = shape
    crop = square_crop_box((10, 10, 45, 45), shape, margin=0.5)
    _assert_square_inside(crop, height, width)
    assert crop[2] - crop[0] == min(height, width)


@pytest.mark.parametrize(
    ("box", "shape", "margin"),
    [
        ((0, 0, 0, 10), (50, 50), 0.1),
        ((0, 0, 10, 10), (0, 50), 0.1),
        ((0, 0, 10, 10), (50, 50), -1),
    ],
)
def test_square_crop_box_rejects_bad_input(box, shape, margin) -> None:
    with pytest.raises(ValueError):
        square_crop_box(box, shape, margin)


@pytest.mark.parametrize(
    "box",
    [(0, 0, 40, 40), (260, 0, 40, 40), (0, 160, 40, 40), (260, 160, 40, 40), (130, 0, 40, 40)],
)
def test_call_clamps_crop_at_borders(monkeypatch, box) -> None:
    cropper = HaarFaceCropper(margin=0.5)
    monkeypatch.setattr(cropper, "detect", lambda image: [box])
    image = np.random.default_rng(1).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    result = cropper(image)
    assert result.found and result.box == box
    _assert_square_inside(result.crop_box, 200, 300)
    assert result.image.shape == (80, 80, 3)
    assert _contains(result.crop_box, box)


@pytest.mark.parametrize("shape", [(8, 8, 3), (20, 400, 3), (400, 20, 3), (1, 1, 3)])
def test_tiny_wide_and_tall_images_do_not_fail(cropper, shape) -> None:
    image = np.full(shape, 90, dtype=np.uint8)
    result = cropper(image)
    assert not result.found and result.image.shape == shape


@pytest.mark.parametrize("layout", ["wide", "tall"])
def test_face_in_wide_and_tall_canvas(cropper, portrait, layout) -> None:
    face_region = portrait[50:350, 116:416]  # the face (x 147-386, y 99-338) whole
    canvas = np.full((300, 900, 3) if layout == "wide" else (900, 300, 3), 200, dtype=np.uint8)
    if layout == "wide":
        canvas[:, 600:] = face_region
    else:
        canvas[600:, :] = face_region
    result = cropper(canvas)
    assert result.found
    _assert_square_inside(result.crop_box, *canvas.shape[:2])
    x, y, _, _ = result.box
    assert (x >= 600) if layout == "wide" else (y >= 600)


@pytest.mark.parametrize("channels", [None, 1])
def test_grayscale_input(cropper, portrait, channels) -> None:
    gray = (portrait @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    if channels == 1:
        gray = gray[:, :, None]
    result = cropper(gray)
    assert result.found
    assert result.image.ndim == 3 and result.image.shape[2] == 3
    assert np.array_equal(result.image[:, :, 0], result.image[:, :, 2])
    fallback = cropper(np.zeros(gray.shape, dtype=np.uint8))
    assert fallback.image.shape == (600, 512, 3)


def test_rgba_input_is_accepted(cropper, portrait) -> None:
    rgba = np.dstack([portrait, np.full(portrait.shape[:2], 255, dtype=np.uint8)])
    assert cropper(rgba).found


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10, 2), dtype=np.uint8),
        np.zeros(10, dtype=np.uint8),
    ],
)
def test_bad_images_are_rejected(cropper, image) -> None:
    with pytest.raises((TypeError, ValueError)):
        cropper(image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale_factor": 1.0}, "scale_factor"),
        ({"scale_factor": 0.5}, "scale_factor"),
        ({"min_neighbors": -1}, "min_neighbors"),
        ({"min_neighbors": 2.5}, "min_neighbors"),
        ({"min_size": 0}, "min_size"),
        ({"margin": -0.1}, "margin"),
    ],
)
def test_bad_parameters(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        HaarFaceCropper(**kwargs)


def test_cascade_is_loaded_once() -> None:
    assert load_cascade() is load_cascade()
    assert HaarFaceCropper()._cascade is HaarFaceCropper()._cascade


def test_draw_box_returns_a_marked_copy() -> None:
    image = np.zeros((50, 60, 3), dtype=np.uint8)
    marked = draw_box(image, (10, 5, 20, 30))
    assert marked is not image and not image.any()
    assert marked.shape == image.shape
    assert tuple(marked[5, 15]) == (0, 255, 0)  # top edge
    assert not marked[20, 20].any()  # inside stays untouched
    assert np.array_equal(draw_box(image, None), image)
    assert draw_box(np.zeros((50, 60), dtype=np.uint8), (1, 1, 5, 5)).shape == (50, 60, 3)


def test_tightly_cropped_small_face_is_found():
    import cv2

    image = face_photo()
    x, y, w, h = HaarFaceCropper().detect(image)[0]
    tight = cv2.resize(np.ascontiguousarray(image[y : y + h, x : x + w]), (70, 70), interpolation=cv2.INTER_AREA)
    bx, by, bw, bh = HaarFaceCropper().detect(tight)[0]
    assert bx >= 0 and by >= 0 and bx + bw <= 70 and by + bh <= 70 and bw >= 35


NEW_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "new-images"


@pytest.mark.skipif(not NEW_IMAGES.is_dir(), reason="../shared/data/new-images absent")
def test_padding_and_upscaling_find_more_real_faces():
    """The real new photos include small, tightly cropped faces that the bare cascade misses."""
    from research.data.images import load_image

    images = [load_image(p) for p in sorted(NEW_IMAGES.glob("*.jpg"))]
    bare = sum(bool(HaarFaceCropper(pad=0.0, upscale_to=0).detect(i)) for i in images)
    helped = sum(bool(HaarFaceCropper().detect(i)) for i in images)
    assert helped > bare
