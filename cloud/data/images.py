"""Reading ordinary image files into the (H, W, 3) uint8 arrays cdca works on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from protocol.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (case-insensitive suffixes)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, size: int) -> np.ndarray:
    """Read an image as RGB, resize its short side to ``size`` and centre-crop a square.

    Returns:
        (size, size, 3) uint8.
    """
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    width, height = rgb.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        resized = rgb.resize(
            (max(size, round(width * scale)), max(size, round(height * scale))),
            Image.Resampling.BILINEAR,
        )
        left = (resized.width - size) // 2
        top = (resized.height - size) // 2
        rgb = resized.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8)
