"""The two gradient-free references: Source (no adaptation) and BN-adapt (test batch statistics).

BN-adapt: Schneider et al., "Improving robustness against common corruptions by
covariate shift adaptation", NeurIPS 2020 (https://arxiv.org/abs/2006.16971); the
"BN Stats Adapt" baseline of CoTTA.
"""

from __future__ import annotations

import torch

from simulations.peers.base import AdaptationMethod, PixelModel, use_batch_statistics


class Source(AdaptationMethod):
    """The source model as trained: eval mode, running statistics, no update."""

    name = "source"

    def __init__(self, model: PixelModel) -> None:
        super().__init__(model)
        self.model.eval()

    @torch.no_grad()
    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict only."""
        self.count(len(pixels), forwards=len(pixels))
        return self.model(pixels)


class BNAdapt(AdaptationMethod):
    """Normalise with each test batch's own statistics; forward only, no training."""

    name = "bn_adapt"

    def __init__(self, model: PixelModel) -> None:
        super().__init__(model)
        self.model.eval()
        use_batch_statistics(self.model)

    @torch.no_grad()
    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict with batch statistics."""
        self.count(len(pixels), forwards=len(pixels))
        return self.model(pixels)

    def reset(self) -> None:
        """Nothing learns, so nothing to restore."""
