"""What a ceiling fit learns from: a domain's own labelled frames, or the cloud's clean images made like them.

Three sources, each with true labels, so the fit measures a parameterisation's reach and
not a cloud target's quality:

* ``stream``: the domain's first ``train_count`` frames (what U-VPA's uploads are drawn
  from, all of them, with labels no device sends).
* ``renderer``: the cloud's clean training images rendered with the spectrum of the domain's
  first ``uploads`` frames, as U-VPA's synthetic samples are (``cloud.adaptation.synthetic``).
* ``oracle``: the same clean images under the domain's true corruption and severity: what a
  perfect renderer would give, the upper reference of the synthetic route. Only for the
  project's corruption suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.data.corruptions import CORRUPTIONS, corrupt_batch
from cloud.students.preprocess import Normalization, pixels_from_uint8
from protocol.errors import ConfigError

FIT_SOURCES = ("stream", "renderer", "oracle")


@dataclass(frozen=True)
class FitSettings:
    """How many images each source gives a fit."""

    train_count: int = 512  # stream frames fitted on; the rest of the domain is scored
    uploads: int = 100  # stream frames the renderer estimates the environment from
    clean_images: int = 2048  # clean images the renderer and the oracle give
    seed: int = 0


def check_sources(sources: Sequence[str], domains: Sequence[str]) -> None:
    """Refuse unknown sources, and the oracle on domains the corruption suite cannot make."""
    unknown = sorted(set(sources) - set(FIT_SOURCES))
    if unknown or not sources:
        raise ConfigError(
            f"--fit-on must be a non-empty subset of {', '.join(FIT_SOURCES)}, got {list(sources)}"
        )
    foreign = [d for d in domains if d not in CORRUPTIONS]
    if "oracle" in sources and foreign:
        raise ConfigError(
            f"the oracle corrupts clean images with the domain's own corruption; "
            f"{', '.join(foreign)} is not in cdca's corruption suite: leave oracle out of --fit-on"
        )


class FitSets:
    """Builds each source's labelled images for one domain.

    Args:
        normalization: the student's input normalisation.
        settings: image counts.
        renderer: U-VPA's renderer over the cloud's clean labelled training images, drawing
            ``settings.clean_images`` per call (needed by the renderer and the oracle).
    """

    def __init__(
        self,
        normalization: Normalization,
        settings: FitSettings,
        renderer: EnvironmentRenderer | None = None,
    ) -> None:
        self.normalization, self.settings, self.renderer = normalization, settings, renderer

    def build(
        self,
        source: str,
        images: np.ndarray,
        labels: np.ndarray,
        corruption: str,
        severity: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised x, labels) ``source`` gives for a domain of (N, H, W, 3) uint8 ``images``."""
        if source == "stream":
            cut = self.settings.train_count
            return self._normalised(images[:cut]), torch.tensor(labels[:cut], dtype=torch.long)
        renderer = self._renderer()
        if source == "renderer":
            frames = torch.from_numpy(np.array(images[: self.settings.uploads]))  # a writable copy
            rendered = renderer.render(frames.permute(0, 3, 1, 2))
            return self.normalization.apply(rendered.pixels), rendered.targets.argmax(dim=1)
        clean = renderer.clean
        pick = np.random.default_rng(self.settings.seed).choice(
            len(clean.images), min(self.settings.clean_images, len(clean.images)), replace=False
        )
        corrupted = corrupt_batch(clean.images[pick], corruption, severity, self.settings.seed)
        return self._normalised(corrupted), torch.tensor(clean.labels[pick], dtype=torch.long)

    def scored(self, images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised x, labels) of the frames after ``train_count``: what every fit is scored on."""
        cut = self.settings.train_count
        return self._normalised(images[cut:]), torch.tensor(labels[cut:], dtype=torch.long)

    def _normalised(self, images: np.ndarray) -> torch.Tensor:
        return self.normalization.apply(pixels_from_uint8(np.ascontiguousarray(images)))

    def _renderer(self) -> EnvironmentRenderer:
        if self.renderer is None:
            raise ConfigError("the renderer and the oracle need the project's training images")
        return self.renderer
