"""Turning uint8 image batches into the normalised float tensors students eat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std in [0, 1] pixel units, applied after scaling by 1/255."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def fit(cls, images: np.ndarray) -> Normalization:
        """Mean and std per channel of (N, H, W, 3) uint8 images."""
        scaled = images.reshape(-1, 3).astype(np.float64) / 255.0
        mean = scaled.mean(axis=0)
        std = scaled.std(axis=0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]

    def to_tensor(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalised."""
        return self.apply(pixels_from_uint8(images, device))

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float pixels in [0, 1] -> normalised, on the same device."""
        mean = pixels.new_tensor(self.mean).view(1, 3, 1, 1)
        std = pixels.new_tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std


def pixels_from_uint8(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 (memory-mapped is fine) -> (N, 3, H, W) float32 in [0, 1]."""
    x = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # copies only if read-only
    return x.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def unit_pixels(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 frames already in torch -> float32 in [0, 1]."""
    return frames.float().div_(255.0)


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) [0, 1] pixels -> the same layout as uint8, the frames a device sends.

    Exact for pixels that came from uint8 frames (``pixels_from_uint8``).
    """
    return (pixels.detach() * 255).round().clamp(0, 255).to(torch.uint8)
