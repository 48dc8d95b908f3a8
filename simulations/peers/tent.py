"""Tent: test-time entropy minimisation of the BatchNorm affine parameters.

Wang, Shelhamer, Liu, Olshausen, Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021 (https://arxiv.org/abs/2006.10726); code DequanWang/tent.
Hyper-parameters follow CoTTA's CIFAR-10-C Tent baseline (Adam, lr 1e-3, betas
(0.9, 0.999)); our batch is 64 instead of 200 (an edge device's batch), unchanged lr.
"""

from __future__ import annotations

import torch

from simulations.peers.base import (
    AdaptationMethod,
    PixelModel,
    entropy,
    norm_affine_parameters,
    use_batch_statistics,
)


class Tent(AdaptationMethod):
    """Batch statistics plus one Adam step on BN scale/shift per batch, minimising entropy."""

    name = "tent"
    uses_backprop = True

    def __init__(self, model: PixelModel, lr: float = 1e-3) -> None:
        super().__init__(model)
        self.model.eval()
        use_batch_statistics(self.model)
        self.model.requires_grad_(False)
        params = norm_affine_parameters(self.model)
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
        self.record(optimizer="Adam", lr=lr, betas=(0.9, 0.999), parameters="BatchNorm affine")

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Forward, then adapt on the same forward's entropy (Tent's forward_and_adapt)."""
        logits = self.model(pixels)
        loss = entropy(logits).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.count(len(pixels), forwards=len(pixels), backwards=len(pixels))
        return logits.detach()
