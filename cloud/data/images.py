"""Reading image files and bringing images to the project's square size (``data.resize``).

Policies (``protocol.config.data.DataConfig.resize``): ``pad`` centres an image on black,
shrinking it first only when it is larger (Fashion-MNIST's 28 px become 32 px exactly as
its padded benchmarks are made); ``crop`` resizes the short side and cuts the centre (the
usual choice for photographs); ``stretch`` resizes both sides (for tiny images such as 8-px
digits); ``none`` refuses any other size, so a stray image is caught instead of hidden.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from protocol.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
RESIZE_HINT = "set data.resize to pad, crop or stretch, or data.image_size to the images' size"


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (case-insensitive suffixes)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def open_rgb(path: Path) -> Image.Image:
    """An image file as RGB, or a ``DataError`` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def read_image(path: Path, size: int, policy: str = "crop") -> np.ndarray:
    """An image file as (size, size, 3) uint8 under ``policy``."""
    return fit_image(open_rgb(path), size, policy, str(path))


def fit_image(image: Image.Image, size: int, policy: str, name: str = "an image") -> np.ndarray:
    """One RGB image brought to (size, size, 3) uint8 under ``policy`` (see the module doc)."""
    width, height = image.size
    if (width, height) == (size, size):
        return np.asarray(image, dtype=np.uint8)
    if policy == "none":
        raise DataError(f"{name} is {width}x{height} px, not {size}x{size}; {RESIZE_HINT}")
    if policy == "stretch":
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    if policy == "crop":
        scale = size / min(width, height)
        resized = image.resize(
            (max(size, round(width * scale)), max(size, round(height * scale))),
            Image.Resampling.BILINEAR,
        )
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    if policy == "pad":
        return _pad(image, size)
    raise DataError(f"unknown resize policy {policy!r}; {RESIZE_HINT}")


def _pad(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    if max(width, height) > size:
        scale = size / max(width, height)
        image = image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))),
            Image.Resampling.BILINEAR,
        )
        width, height = image.size
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width] = np.asarray(image, dtype=np.uint8)
    return canvas


def fit_images(images: np.ndarray, size: int, policy: str, name: str) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 under ``policy``; a no-op at that size."""
    if images.shape[1:3] == (size, size):
        return images
    if policy == "none":
        height, width = images.shape[1:3]
        raise DataError(f"{name} images are {width}x{height} px, not {size}x{size}; {RESIZE_HINT}")
    if policy == "pad" and max(images.shape[1:3]) <= size:  # pure padding: no resampling
        height, width = images.shape[1:3]
        top, left = (size - height) // 2, (size - width) // 2
        pads = ((0, 0), (top, size - height - top), (left, size - width - left), (0, 0))
        return np.pad(images, pads)
    return np.stack([fit_image(Image.fromarray(im), size, policy, name) for im in images])
