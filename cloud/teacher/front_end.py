"""Fixed input front ends for the companion teacher: local contrast normalisation.

Jarrett, Kavukcuoglu, Ranzato and LeCun, "What is the best multi-stage architecture for
object recognition?" (ICCV 2009) and Pinto, Cox and DiCarlo, "Why is real-world visual
object recognition hard?" (PLoS Comput. Biol. 2008) put a subtractive and divisive
normalisation in front of a network, the way a retina discards illumination. Why here: the
changes a camera's world makes most often (haze, fog, glare, low contrast, exposure) add a
smooth field to the image or scale it about its mean. Subtracting a blurred copy removes the
smooth field, and dividing by the image's own high-pass energy removes the scale, so a
network behind this front end never sees either. It is a fixed function with no learned
parameters and it is applied to clean training images too; the companion never trains on
a test corruption (docs/uvpa.md).
"""

from __future__ import annotations

import torch
from torchvision.transforms.functional import gaussian_blur

from protocol.errors import ConfigError

FRONT_ENDS = ("none", "lcn")
LCN_SIGMA = 2.0  # pixels of the 32 x 32 input: wider than a stroke, narrower than a garment
LCN_EPS = 0.05  # keeps near-blank images from being blown up into noise


def check_front_end(name: str) -> str:
    """``name`` if it is a known front end, else a ``ConfigError`` listing them."""
    if name not in FRONT_ENDS:
        raise ConfigError(f"unknown companion front end {name!r}; choose one of {FRONT_ENDS}")
    return name


def apply_front_end(name: str, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) [0, 1] pixels -> the companion network's input for front end ``name``."""
    if check_front_end(name) == "none":
        return (pixels - 0.5) / 0.5
    return local_contrast_normalise(pixels)


def local_contrast_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Grey high-pass (image minus its Gaussian blur), divided by its own RMS per image.

    Returned on three identical channels, so the companion's first convolution is the same
    shape with either front end.
    """
    size = 2 * round(3 * LCN_SIGMA) + 1
    grey = pixels.mean(dim=1, keepdim=True)
    high_pass = grey - gaussian_blur(grey, [size, size], [LCN_SIGMA, LCN_SIGMA])
    local_energy = gaussian_blur(high_pass * high_pass, [size, size], [LCN_SIGMA, LCN_SIGMA])
    rms = local_energy.mean(dim=(2, 3), keepdim=True).sqrt()
    return (high_pass / (rms + LCN_EPS)).expand(-1, pixels.shape[1], -1, -1)
