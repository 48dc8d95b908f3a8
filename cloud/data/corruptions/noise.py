"""Pixel-noise corruptions (Gaussian, shot, impulse, speckle) on float images in [0, 1].

Reference: Hendrycks & Dietterich, ICLR 2019 (https://arxiv.org/abs/1903.12261),
``make_cifar_c.py``. Each function takes an (H, W, 3) float32 image in [0, 1], the
severity constant and an explicit ``np.random.Generator`` so that output is a pure
function of the seed.
"""

from __future__ import annotations

import numpy as np

FloatImage = np.ndarray


def gaussian_noise(x: FloatImage, sigma: float, rng: np.random.Generator) -> FloatImage:
    """Add zero-mean Gaussian noise with standard deviation ``sigma``."""
    return np.clip(x + rng.normal(scale=sigma, size=x.shape), 0.0, 1.0)


def shot_noise(x: FloatImage, photons: float, rng: np.random.Generator) -> FloatImage:
    """Poisson (photon-counting) noise; fewer ``photons`` means more noise."""
    return np.clip(rng.poisson(x * photons) / photons, 0.0, 1.0)


def impulse_noise(x: FloatImage, amount: float, rng: np.random.Generator) -> FloatImage:
    """Salt-and-pepper noise on a fraction ``amount`` of the values, half salt and half pepper.

    Same statistics as ``skimage.util.random_noise(mode="s&p")`` used by the reference.
    """
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


def speckle_noise(x: FloatImage, sigma: float, rng: np.random.Generator) -> FloatImage:
    """Multiplicative Gaussian noise: bright pixels get noisier."""
    return np.clip(x + x * rng.normal(scale=sigma, size=x.shape), 0.0, 1.0)
