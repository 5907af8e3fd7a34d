"""Decoding any image file into the one array format the package uses: HxWx3 uint8 RGB."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from research.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
# Images are decoded with their longest side at most this many pixels (training shrinks them further to
# data.image_size; predict's panels and face detection need no more): a JPEG over it is decoded at a
# reduced scale (JPEG's DCT scaling), anything else is shrunk after decoding.
DECODE_MAX_SIDE = 2048
# A header that claims more pixels per byte of file than any real image of its format holds is a
# decompression bomb or a damaged file. JPEG needs at least 2 bits per 8x8 block (256 pixels per byte);
# deflate (PNG) and LZW (GIF) compress at most about 1000:1 per byte of raw pixels (8 pixels of a
# 1-bit image). Checked for every JPEG, and for other formats from this many claimed pixels on (smaller
# images decode cheaply either way, and fax-compressed TIFFs of blank pages compress further).
MAX_JPEG_PIXELS_PER_BYTE = 1024
MAX_PIXELS_PER_BYTE = 10_000
PLAUSIBLE_CHECK_PIXELS = 4096 * 4096


class ImageDecodeError(UserError, ValueError):
    """A file that is not an image or cannot be decoded; the message names the file."""


def is_image_path(path: Path) -> bool:
    """True when the extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1) to HxWx3 uint8 RGB.

    Transparent pixels are composited on white, 16/32-bit images are rescaled by their
    value range rather than clipped (a plain ``convert("RGB")`` saturates them to white).
    """
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        gray = ((arr - lo) * scale).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def shrink_to(image: np.ndarray, longest: int | None) -> np.ndarray:
    """Downscale so the longest side is ``longest`` (never upscales); area interpolation."""
    if longest is None or max(image.shape[:2]) <= longest:
        return image
    h, w = image.shape[:2]
    scale = longest / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_image(path: str | Path, *, max_side: int | None = DECODE_MAX_SIDE) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, applying its EXIF orientation, its longest side at most
    ``max_side`` pixels (larger images are shrunk; None keeps the full size).

    Memory is bounded per image: a JPEG larger than ``max_side`` is decoded at a reduced scale (JPEG's DCT
    scaling, 1/2 to 1/8), nothing is decoded at more than PIL's ``MAX_IMAGE_PIXELS``, and a header that
    claims far more pixels than the file's bytes can hold is refused before decoding.

    Raises:
        ImageDecodeError: the file is missing, not an image, truncated, corrupt, implausible or too large.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageDecodeError(
            f"{path}: broken symbolic link (to {os.readlink(path)}). Restore its target or delete the link, "
            "or set data.bad_files=skip to leave it out (it is still reported)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(path)
            except Image.DecompressionBombError:
                img = _open_large_jpeg(path)
            with img:
                _check_size(path, img, max_side)
                img.load()
                img = ImageOps.exif_transpose(img)
                return shrink_to(to_rgb_array(img), max_side)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            f"{path}: cannot be decoded as an image ({err}). Delete or replace the file, "
            "or set data.bad_files=skip to leave it out (it is still reported)."
        ) from err


def _check_size(path: Path, img: Image.Image, max_side: int | None) -> None:
    """Refuse an implausible or too large image before it is decoded; set a large JPEG to decode downscaled."""
    width, height = img.size
    pixels = width * height
    size = path.stat().st_size
    jpeg = img.format == "JPEG"
    per_byte = MAX_JPEG_PIXELS_PER_BYTE if jpeg else MAX_PIXELS_PER_BYTE
    if (jpeg or pixels >= PLAUSIBLE_CHECK_PIXELS) and pixels > per_byte * size:
        raise ImageDecodeError(
            f"{path}: its header claims {width}x{height} pixels, but the file has only {size} bytes, far fewer "
            "than any image that size needs (a decompression bomb or a damaged file). Delete or replace it, or "
            "set data.bad_files=skip to leave it out (it is still reported)."
        )
    request = _draft_request(width, height, max_side) if jpeg else None
    if request is not None:
        img.draft(img.mode, request)
        width, height = img.size  # the size it decodes to: the JPEG scaled by 1/2, 1/4 or 1/8
    if width * height > Image.MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"{path}: {width}x{height} pixels is over the decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} "
            "pixels, PIL's); only JPEGs can be decoded downscaled. Shrink the file, or set data.bad_files=skip "
            "to leave it out."
        )


def _draft_request(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """The size to ask a JPEG's decoder for (it decodes at the smallest DCT scale that is at least as large):
    ``max_side`` on the longer side, and small enough that even twice that per side stays within PIL's pixel
    limit; None when the JPEG needs no reduction."""
    longest, pixels = max(width, height), width * height
    target = longest if max_side is None else min(longest, max_side)
    if pixels > Image.MAX_IMAGE_PIXELS:
        target = min(target, math.floor(longest * math.sqrt(Image.MAX_IMAGE_PIXELS / pixels) / 2))
    if target >= longest:
        return None
    scale = max(target, 1) / longest
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _open_large_jpeg(path: Path) -> Image.Image:
    """Open an image over twice PIL's pixel limit (``Image.open`` refuses it): a JPEG through its plugin,
    which skips ``Image.open``'s size check for this file only (the global limit is never changed: other
    threads decode at the same time), to be decoded downscaled; anything else is refused."""
    from PIL import JpegImagePlugin

    with open(path, "rb") as fh:
        is_jpeg = fh.read(3) == b"\xff\xd8\xff"
    if not is_jpeg:
        raise ImageDecodeError(
            f"{path}: over the decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels, PIL's) and only "
            "JPEGs can be decoded downscaled. Shrink the file, or set data.bad_files=skip to leave it out."
        )
    return JpegImagePlugin.JpegImageFile(str(path))
