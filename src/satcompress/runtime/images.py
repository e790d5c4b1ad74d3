"""Images in, uint8 pixels out: the same decode and resize rule as training (Pillow only).

The training data is decoded by :mod:`satcompress.data.decode`, which calls
:func:`fit_image` here: RGB (other modes converted by Pillow), then, when the size differs
from the model's, one bilinear resize by Pillow (its bilinear filter widens its support when
it shrinks, i.e. it antialiases). A device that feeds the model pixels prepared any other
way (OpenCV, a different filter) gets slightly different predictions than the figures.
Truncated files fail, whatever another library set globally (:func:`strict_decoding`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

#: File suffixes :func:`list_images` picks up in a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

ImageLike = str | os.PathLike | Image.Image | np.ndarray

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageError",
    "ImageLike",
    "fit_image",
    "list_images",
    "load_image",
    "strict_decoding",
]


class ImageError(ValueError):
    """An image cannot be read or has the wrong shape; the message names the file."""


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Make truncated images fail, whatever another library set globally; restore after."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def fit_image(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` as ``(H, W, 3)`` uint8 RGB at ``size`` = (height, width).

    Raises:
        ValueError: If the decoded pixels do not have the expected shape.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb)
    if pixels.shape != (*size, 3):
        raise ValueError(f"decoded to shape {pixels.shape}, expected {(*size, 3)}")
    return pixels


def load_image(source: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """One image (a path, a Pillow image or an array) as ``(H, W, 3)`` uint8 at ``size``.

    Arrays are ``(H, W, 3)`` or ``(H, W)`` uint8 pixels (RGB; grey is repeated), resized by
    the same rule as files.

    Raises:
        ImageError: If a file cannot be decoded (the message names it) or an array is not
            uint8 ``(H, W)`` / ``(H, W, 3)``.
    """
    if isinstance(source, Image.Image):
        return fit_image(source, size)
    if isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] != 3)
        ):
            raise ImageError(
                f"an image array must be uint8 (H, W, 3) or (H, W), got {source.dtype} "
                f"{source.shape}"
            )
        if source.shape[:2] == tuple(size) and source.ndim == 3:
            return source
        return fit_image(Image.fromarray(source), size)
    path = Path(source)
    try:
        with strict_decoding(), Image.open(path) as image:
            return fit_image(image, size)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot read this image ({type(err).__name__}: {err})") from err


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted, by :data:`IMAGE_SUFFIXES`."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
