"""Where a pixel prompt may live: the whole image, a border (padding) or a fixed patch.

Bahng et al., "Exploring Visual Prompts for Adapting Large-Scale Models" (2022,
https://arxiv.org/abs/2203.17274) compare these three shapes; U-VPA (Gan et al., CVPR 2023)
uses image-level prompts. The device model always takes a full (1, 3, H, W) prompt input;
a shape is a fixed 0/1 mask the cloud keeps its learned prompt inside, so changing the
shape never changes the model file.
"""

from __future__ import annotations

import torch

from protocol.errors import ConfigError

SHAPES = ("full", "border:W", "patch:S")


def prompt_mask(shape: str, size: int) -> torch.Tensor:
    """(1, 1, size, size) mask for ``full``, ``border:W`` (a W-pixel frame) or ``patch:S`` (top-left S x S)."""
    kind, _, arg = shape.partition(":")
    mask = torch.zeros(1, 1, size, size)
    if kind == "full" and not arg:
        return mask + 1
    width = _positive_int(shape, arg, size)
    if kind == "border":
        mask[..., :width, :] = mask[..., -width:, :] = 1
        mask[..., :, :width] = mask[..., :, -width:] = 1
        return mask
    if kind == "patch":
        mask[..., :width, :width] = 1
        return mask
    raise ConfigError(f"unknown pixel prompt shape {shape!r}; use one of {', '.join(SHAPES)}")


def _positive_int(shape: str, arg: str, size: int) -> int:
    if not arg.isdigit() or not 0 < int(arg) <= size:
        raise ConfigError(
            f"pixel prompt shape {shape!r} needs a width between 1 and {size}, e.g. border:4"
        )
    return int(arg)
