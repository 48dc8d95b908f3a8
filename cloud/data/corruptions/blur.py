"""Blur corruptions (defocus, glass, motion, zoom, Gaussian) on float images in [0, 1].

Reference: Hendrycks & Dietterich, ICLR 2019 (https://arxiv.org/abs/1903.12261),
``make_cifar_c.py``. The disk kernel, clipped zoom, NumPy motion-blur kernel and the
numba pixel shuffle come from the maintained ``imagecorruptions-imaug`` package; the
severity constants are the CIFAR ones in ``constants.py``.
"""

from __future__ import annotations

import cv2
import numpy as np
from imagecorruptions.corruptions import (
    _motion_blur,
    _shuffle_pixels_njit_glass_blur,
    disk,
)
from skimage.filters import gaussian

FloatImage = np.ndarray


def gaussian_blur(x: FloatImage, sigma: float, rng: np.random.Generator) -> FloatImage:
    """Isotropic Gaussian blur with standard deviation ``sigma`` pixels."""
    del rng  # deterministic corruption
    return np.clip(gaussian(x, sigma=sigma, channel_axis=-1), 0.0, 1.0)


def defocus_blur(
    x: FloatImage, params: tuple[float, float], rng: np.random.Generator
) -> FloatImage:
    """Convolve with an anti-aliased disk of ``(radius, alias_blur)``."""
    del rng
    radius, alias_blur = params
    kernel = disk(radius=radius, alias_blur=alias_blur)
    channels = [cv2.filter2D(x[:, :, d].astype(np.float32), -1, kernel) for d in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def glass_blur(
    x: FloatImage, params: tuple[float, int, int], rng: np.random.Generator
) -> FloatImage:
    """Blur, shuffle pixels locally ``iterations`` times within ``max_delta``, blur again."""
    sigma, max_delta, iterations = params
    blurred = np.uint8(gaussian(x, sigma=sigma, channel_axis=-1) * 255)
    seed = int(rng.integers(0, 2**31 - 1))
    shuffled = _shuffle_pixels_njit_glass_blur(
        x.shape[0], x.shape[1], blurred, (sigma, max_delta, iterations), seed
    )
    return np.clip(gaussian(shuffled / 255.0, sigma=sigma, channel_axis=-1), 0.0, 1.0)


def motion_blur(
    x: FloatImage, params: tuple[float, float], rng: np.random.Generator
) -> FloatImage:
    """Linear motion blur of ``(radius, sigma)`` at a random angle in [-45, 45] degrees."""
    radius, sigma = params
    angle = rng.uniform(-45, 45)
    return np.clip(_motion_blur(x, radius=radius, sigma=sigma, angle=angle), 0.0, 1.0)


def zoom_blur(
    x: FloatImage, params: tuple[float, float], rng: np.random.Generator
) -> FloatImage:
    """Average the image with centre zooms from ``first`` to ``last`` in steps of 0.01."""
    del rng
    first, last = params
    zooms = np.arange(first, last, 0.01)
    image = x.astype(np.float32)
    out = np.zeros_like(image)
    for zoom in zooms:
        out += centre_zoom(image, zoom)
    return np.clip((image + out) / (len(zooms) + 1), 0.0, 1.0)


def centre_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Crop the centre 1/zoom of ``x`` and scale it back up to ``x``'s size (bilinear).

    Same geometry as the reference's ``clipped_zoom``; OpenCV's resize instead of
    ``scipy.ndimage.zoom`` makes it about 20 times faster on 32-px images.
    """
    height, width = x.shape[:2]
    crop_h, crop_w = int(np.ceil(height / zoom)), int(np.ceil(width / zoom))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = np.ascontiguousarray(x[top : top + crop_h, left : left + crop_w])
    big_h, big_w = round(crop_h * zoom), round(crop_w * zoom)
    scaled = cv2.resize(crop, (big_w, big_h), interpolation=cv2.INTER_LINEAR)
    if scaled.ndim == 2:
        scaled = scaled[..., np.newaxis]
    return scaled[:height, :width]
