"""Teacher training augmentations, disjoint from the 15 test corruptions.

Two families, both allowed by the benchmark's rules: AugMix's operations without the
colour/contrast/brightness/sharpness ones (Hendrycks et al., ICLR 2020,
https://arxiv.org/abs/1912.02781; torchvision's ``AugMix(all_ops=False)``), and the 4
extra corruptions reserved for training (speckle noise, Gaussian blur, spatter,
saturate) at random severities.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import AugMix

from cloud.data.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITY_CONSTANTS

AUGMIX_GROUP = 16  # AugMix draws one chain per call; groups of images share a draw


def extra_corruptions(
    images: np.ndarray, probability: float, rng: np.random.Generator
) -> np.ndarray:
    """Apply one random extra corruption at a random severity to each image with ``probability``.

    Args:
        images: (batch, H, W, 3) uint8.
        probability: chance that an image is corrupted.
        rng: source of every random choice (which image, corruption, severity, noise).
    """
    out = images.copy()
    for index in np.flatnonzero(rng.random(len(images)) < probability):
        name = EXTRA_CORRUPTIONS[int(rng.integers(len(EXTRA_CORRUPTIONS)))]
        constant = SEVERITY_CONSTANTS[name][int(rng.integers(5))]
        corrupted = CORRUPTIONS[name](images[index].astype(np.float32) / 255.0, constant, rng)
        out[index] = np.round(np.clip(corrupted, 0, 1) * 255).astype(np.uint8)
    return out


def augmix(pixels_u8: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """AugMix (no colour/contrast/brightness/sharpness ops) on a random share of the batch.

    Args:
        pixels_u8: (batch, 3, H, W) uint8.
        probability: chance that an image is mixed.
        generator: chooses the images; AugMix's own draws use torch's global generator.
    """
    mixer = AugMix(severity=3, all_ops=False)
    out = pixels_u8.clone()
    chosen = torch.nonzero(torch.rand(len(out), generator=generator) < probability).flatten()
    for start in range(0, len(chosen), AUGMIX_GROUP):
        idx = chosen[start : start + AUGMIX_GROUP]
        out[idx] = mixer(out[idx])
    return out
