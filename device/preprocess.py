"""NumPy-only preprocessing driven by the model manifest; must not import torch."""

from __future__ import annotations

import numpy as np

from protocol.errors import DataError
from protocol.manifest import Preprocess


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, size, size, 3) float32, bilinear, pixel centres aligned like PIL/torch."""
    n, height, width, _ = images.shape
    if (height, width) == (size, size):
        return images.astype(np.float32)
    ys = np.clip((np.arange(size) + 0.5) * height / size - 0.5, 0, height - 1)
    xs = np.clip((np.arange(size) + 0.5) * width / size - 0.5, 0, width - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    wy, wx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    img = images.astype(np.float32)
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bottom = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    resized: np.ndarray = top * (1 - wy) + bottom * wy
    return resized


def as_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey frames -> (N, H, W, 3); colour frames unchanged."""
    return np.repeat(images[..., np.newaxis], 3, axis=-1) if images.ndim == 3 else images


def preprocess(images: np.ndarray, spec: Preprocess) -> np.ndarray:
    """(N, H, W, 3) or (N, H, W) uint8 -> (N, 3, size, size) float32 model input.

    Raises:
        DataError: the array is not a batch of 8-bit images.
    """
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {images.dtype}")
    images = as_rgb(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must be (N, H, W, 3) or (N, H, W), got {images.shape}")
    x = resize_bilinear(images, spec.image_size) * np.float32(spec.scale)
    mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(spec.std, np.float32).reshape(1, 1, 1, 3)
    return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))
