"""CoTTA's CIFAR test-time augmentations, on (batch, 3, H, W) tensors in [0, 1].

Source: qinenergy/cotta ``cifar/my_transforms.py::get_tta_transforms`` (CVPR 2022,
https://arxiv.org/abs/2203.13591). As in the original, one random draw of parameters is
applied to the whole batch. ROID uses the same family with reflect padding and without the
blur and noise (mariodoebler/test-time-adaptation ``get_tta_transforms(cotta_augs=False)``).
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode


class _Gamma(torch.nn.Module):
    """Random gamma in [low, high] (the gamma part of CoTTA's ColorJitterPro)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = float(torch.empty(1).uniform_(self.low, self.high))
        return TF.adjust_gamma(x.clamp(1e-6, 1.0), gamma)


class _GaussianNoise(torch.nn.Module):
    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x) * self.std


def cotta_augmentation(
    image_size: int = 32,
    noise_std: float = 0.005,
    padding_mode: str = "edge",
    blur_and_noise: bool = True,
) -> T.Compose:
    """Colour jitter + gamma, pad, affine, (blur), centre crop, flip, (noise), clip."""
    steps: list[torch.nn.Module] = [
        T.ColorJitter(
            brightness=(0.6, 1.4), contrast=(0.7, 1.3), saturation=(0.5, 1.5), hue=(-0.06, 0.06)
        ),
        _Gamma(0.7, 1.3),
        T.Pad(padding=image_size // 2, padding_mode=padding_mode),
        T.RandomAffine(
            degrees=15,
            translate=(1 / 16, 1 / 16),
            scale=(0.9, 1.1),
            interpolation=InterpolationMode.BILINEAR,
        ),
    ]
    if blur_and_noise:
        steps.append(T.GaussianBlur(kernel_size=5, sigma=(0.001, 0.5)))
    steps += [T.CenterCrop(image_size), T.RandomHorizontalFlip(0.5)]
    if blur_and_noise:
        steps.append(_GaussianNoise(noise_std))
    steps.append(T.Lambda(lambda x: x.clamp(0.0, 1.0)))
    return T.Compose(steps)
