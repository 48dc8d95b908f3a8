"""Synthetic environment samples: the cloud's labelled clean images, changed the way the uploads are.

Why (docs/uvpa.md): about 100 uploads per environment move the device's BatchNorm
scale/shift only so far, and the uploads' true labels do no better than the teacher's
answers, so the number of samples is the limit, not their labels. The cloud holds the
labelled clean set its teacher and student learned from. From the uploads alone it
estimates how the environment changes images: per frequency, the uploads' mean amplitude
spectrum over the clean set's (a linear filter: contrast, blur, brightness, and the
average effect of fog or frost). Clean images passed through that filter keep their
phase, and with it what they show and their label; they join the fit's training part,
while the safety valve still judges on held-out uploads only.

Related: FDA (Yang and Soatto, "FDA: Fourier Domain Adaptation for Semantic
Segmentation", CVPR 2020, https://arxiv.org/abs/2004.05498) puts one target image's
low-frequency amplitude into a source image. On Fashion-MNIST-C that kept the clean
images' full contrast at 32 px (a probe), so here the whole spectrum is scaled by the
environment's mean gain instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from cloud.data.labelled import LabelledImages
from cloud.students.preprocess import unit_pixels
from protocol.config.adaptation import SyntheticConfig
from protocol.errors import DataError

__all__ = ["EnvironmentRenderer", "SyntheticConfig", "SyntheticSamples"]

SPECTRUM_FLOOR = 1e-6  # added to both spectra before dividing
SPECTRUM_CHUNK = 1000  # clean images per FFT when measuring the clean spectrum (bounds memory)


@dataclass(frozen=True)
class SyntheticSamples:
    """Rendered clean images and the targets the fit should match.

    Attributes:
        pixels: (count, 3, H, W) float in [0, 1].
        targets: (count, C) smoothed one-hot probabilities of the clean labels.
    """

    pixels: torch.Tensor
    targets: torch.Tensor


class EnvironmentRenderer:
    """Renders the cloud's clean labelled images with the spectrum of one environment's uploads.

    Args:
        clean: the clean labelled set (e.g. the Fashion-MNIST training split), its labels
            indices into the device's classes.
        num_classes: the device's number of classes.
        config: count, smoothing, seed.
    """

    def __init__(
        self,
        clean: LabelledImages,
        num_classes: int,
        config: SyntheticConfig | None = None,
    ) -> None:
        self.config = config or SyntheticConfig()
        _check_clean(clean, num_classes)
        self.clean = clean
        self.images = torch.from_numpy(np.ascontiguousarray(clean.images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(clean.labels, dtype=np.int64))
        self.num_classes = num_classes
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.clean_amplitude = self._mean_amplitude()

    def with_config(self, config: SyntheticConfig) -> EnvironmentRenderer:
        """This renderer (same clean images and spectrum) drawing per ``config``."""
        if config.spectrum_images != self.config.spectrum_images:
            return EnvironmentRenderer(self.clean, self.num_classes, config)
        twin = copy.copy(self)
        twin.config = config
        twin.generator = torch.Generator().manual_seed(config.seed)
        return twin

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(3, H, W): the only upload shape this renderer accepts."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def gain(self, frames: torch.Tensor) -> torch.Tensor:
        """(3, H, W) per-frequency gain: the uploads' mean amplitude over the clean set's."""
        _check_frames(frames, self.frame_shape)
        amplitude = torch.fft.fft2(unit_pixels(frames)).abs().mean(dim=0)
        # where neither has energy the gain is 1, not 0/0
        return (amplitude + SPECTRUM_FLOOR) / (self.clean_amplitude + SPECTRUM_FLOOR)

    @torch.no_grad()
    def render(self, frames: torch.Tensor) -> SyntheticSamples:
        """``count`` clean images rendered with the environment of ``frames`` (n, 3, H, W) uint8."""
        gain = self.gain(frames)
        pick = torch.randint(len(self.images), (self.config.count,), generator=self.generator)
        spectrum = torch.fft.fft2(unit_pixels(self.images[pick]))
        pixels = torch.fft.ifft2(spectrum * gain).real.clamp(0, 1)
        return SyntheticSamples(pixels, self._targets(self.labels[pick]))

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        smoothing = self.config.smoothing
        targets = torch.full((len(labels), self.num_classes), smoothing / (self.num_classes - 1))
        targets[torch.arange(len(labels)), labels] = 1 - smoothing
        return targets

    def _mean_amplitude(self) -> torch.Tensor:
        count = min(len(self.images), self.config.spectrum_images)
        generator = torch.Generator().manual_seed(self.config.seed)
        chosen = torch.randperm(len(self.images), generator=generator)[:count]
        total = torch.zeros(self.images.shape[1:], dtype=torch.float32)
        for start in range(0, count, SPECTRUM_CHUNK):
            chunk = unit_pixels(self.images[chosen[start : start + SPECTRUM_CHUNK]])
            total += torch.fft.fft2(chunk).abs().sum(dim=0)
        return total / count


def _check_clean(clean: LabelledImages, num_classes: int) -> None:
    """What ``LabelledImages`` does not check already: images there, labels the device's."""
    if not len(clean.images):
        raise DataError("the clean set is empty")
    labels = clean.labels
    if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"clean labels must lie in [0, {num_classes}), the device's classes")


def _check_frames(frames: torch.Tensor, shape: tuple[int, int, int]) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != shape:
        raise DataError(
            f"uploads to render from must be (n, {', '.join(map(str, shape))}) uint8 frames, "
            f"got {tuple(frames.shape)} {frames.dtype}"
        )
    if not len(frames):
        raise DataError("no uploads to estimate the environment from")
