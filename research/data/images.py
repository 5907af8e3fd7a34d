"""Decoding any image file into the one array format the package uses: HxWx3 uint8 RGB."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from research.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
# A JPEG over PIL's decompression-bomb limit is decoded at a reduced scale (JPEG's DCT scaling keeps
# memory bounded): its longer side comes out between this and twice this many pixels.
LARGE_JPEG_SIDE = 4096


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


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, applying its EXIF orientation.

    Raises:
        ImageDecodeError: the file is missing, not an image, truncated or corrupt.
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
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb_array(img)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            f"{path}: cannot be decoded as an image ({err}). Delete or replace the file, "
            "or set data.bad_files=skip to leave it out (it is still reported)."
        ) from err


def _open_large_jpeg(path: Path) -> Image.Image:
    """Open an image over PIL's pixel limit: a JPEG is set to decode downscaled (bounded memory);
    anything else is refused as a decompression bomb. The JPEG plugin is used directly, which skips
    ``Image.open``'s size check for this file only (the global limit is never changed: other
    threads decode at the same time)."""
    from PIL import JpegImagePlugin

    with open(path, "rb") as fh:
        is_jpeg = fh.read(3) == b"\xff\xd8\xff"
    if not is_jpeg:
        raise ImageDecodeError(
            f"{path}: over the decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels, PIL's) and only "
            "JPEGs can be decoded downscaled. Shrink the file, or set data.bad_files=skip to leave it out."
        )
    img = JpegImagePlugin.JpegImageFile(str(path))
    img.draft("RGB", (LARGE_JPEG_SIDE, LARGE_JPEG_SIDE))
    return img
