"""Digital corruptions (brightness, contrast, saturate, JPEG, pixelate, elastic) in [0, 1].

Reference: Hendrycks & Dietterich, ICLR 2019 (https://arxiv.org/abs/1903.12261),
``make_cifar_c.py``, with CIFAR constants from ``constants.py``.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian

FloatImage = np.ndarray


def brightness(x: FloatImage, shift: float, rng: np.random.Generator) -> FloatImage:
    """Raise the HSV value channel by ``shift``."""
    del rng
    hsv = rgb2hsv(x)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + shift, 0, 1)
    return np.clip(hsv2rgb(hsv), 0.0, 1.0)


def contrast(x: FloatImage, factor: float, rng: np.random.Generator) -> FloatImage:
    """Pull every pixel towards the per-channel mean by ``factor``."""
    del rng
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * factor + means, 0.0, 1.0)


def saturate(x: FloatImage, params: tuple[float, float], rng: np.random.Generator) -> FloatImage:
    """Scale and shift the HSV saturation channel."""
    del rng
    scale, offset = params
    hsv = rgb2hsv(x)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * scale + offset, 0, 1)
    return np.clip(hsv2rgb(hsv), 0.0, 1.0)


def jpeg_compression(x: FloatImage, quality: int, rng: np.random.Generator) -> FloatImage:
    """Round-trip through a JPEG encoder at ``quality``."""
    del rng
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0


def pixelate(x: FloatImage, factor: float, rng: np.random.Generator) -> FloatImage:
    """Box-downsample by ``factor`` and box-upsample back."""
    del rng
    height, width = x.shape[:2]
    image = Image.fromarray(_to_uint8(x))
    small = image.resize((int(width * factor), int(height * factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BOX), np.float32) / 255.0


def elastic_transform(
    x: FloatImage, params: tuple[float, float, float], rng: np.random.Generator
) -> FloatImage:
    """Random affine jitter of three anchor points, then a smooth elastic displacement field."""
    alpha, sigma, jitter = params
    height, width = x.shape[:2]
    centre = np.array([height, width], dtype=np.float32) // 2
    side = min(height, width) // 3
    anchors = np.array(
        [centre + side, [centre[0] + side, centre[1] - side], centre - side], dtype=np.float32
    )
    moved = anchors + rng.uniform(-jitter, jitter, size=anchors.shape).astype(np.float32)
    affine = cv2.getAffineTransform(anchors, moved)
    warped = cv2.warpAffine(
        x.astype(np.float32), affine, (width, height), borderMode=cv2.BORDER_REFLECT_101
    )
    dx = _smooth_field(rng, (height, width), sigma) * alpha
    dy = _smooth_field(rng, (height, width), sigma) * alpha
    cols, rows, chans = np.meshgrid(np.arange(width), np.arange(height), np.arange(x.shape[2]))
    coords = (
        (rows + dy[..., np.newaxis]).reshape(-1),
        (cols + dx[..., np.newaxis]).reshape(-1),
        chans.reshape(-1),
    )
    out = map_coordinates(warped, coords, order=1, mode="reflect").reshape(x.shape)
    return np.clip(out, 0.0, 1.0)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = rng.uniform(-1, 1, size=shape)
    if sigma <= 0:
        return noise.astype(np.float32)
    return gaussian(noise, sigma, mode="reflect", truncate=3).astype(np.float32)


def _to_uint8(x: FloatImage) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
