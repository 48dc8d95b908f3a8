"""The corruption suite for 32-px images: 15 test corruptions (CoTTA order) and 4 extra ones.

``corrupt_batch`` is a pure function of (images, name, severity, seed): every image draws
from a generator seeded by those values and its index, so the same call always gives the
same bytes, whichever process runs it and in whatever order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cloud.data.corruptions import blur, digital, noise, weather
from cloud.data.corruptions.constants import DEVIATIONS, SEVERITY_CONSTANTS
from protocol.errors import ConfigError, DataError, unknown_name

CorruptionFn = Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]

# The continual test-time adaptation order used by CoTTA and its successors.
TEST_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# Reserved for training-time augmentation and validation, never for the test stream.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "speckle_noise": noise.speckle_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "gaussian_blur": blur.gaussian_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "spatter": weather.spatter,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "saturate": digital.saturate,
    "jpeg_compression": digital.jpeg_compression,
    "pixelate": digital.pixelate,
    "elastic_transform": digital.elastic_transform,
}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

__all__ = [
    "CORRUPTIONS",
    "DEVIATIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "SEVERITY_CONSTANTS",
    "TEST_CORRUPTIONS",
    "check_corruption",
    "corrupt_batch",
    "list_corruptions",
]


def list_corruptions() -> list[str]:
    """All corruption names: the 15 test ones in CoTTA order, then the 4 extra ones."""
    return [*TEST_CORRUPTIONS, *EXTRA_CORRUPTIONS]


def check_corruption(name: str) -> str:
    """Return ``name`` if it is a known corruption, else raise with the list of known names."""
    if name not in CORRUPTIONS:
        raise unknown_name("corruption", name, CORRUPTIONS)
    return name


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt a batch of RGB images.

    Args:
        images: (batch, 32, 32, 3) uint8; other square sizes work but the constants are
            calibrated for 32 px.
        name: a corruption from ``list_corruptions()``.
        severity: 1..5.
        seed: the dataset seed; image ``i`` uses a generator seeded by (seed, name, severity, i).

    Returns:
        (batch, H, W, 3) uint8, the corrupted images.

    Raises:
        UnknownNameError: ``name`` is not a corruption.
        ConfigError: ``severity`` is outside 1..5.
        DataError: ``images`` is not a uint8 (batch, H, W, 3) array.
    """
    fn = CORRUPTIONS[check_corruption(name)]
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of 1..5, got {severity!r}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"corrupt_batch needs (batch, H, W, 3) uint8 images, got {images.dtype} "
            f"{images.shape}"
        )
    constant = SEVERITY_CONSTANTS[name][severity - 1]
    name_key = list_corruptions().index(name)
    out = np.empty_like(images)
    for index, image in enumerate(images):
        rng = np.random.default_rng([seed, name_key, severity, index])
        corrupted = fn(image.astype(np.float32) / 255.0, constant, rng)
        out[index] = np.round(np.clip(corrupted, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out
