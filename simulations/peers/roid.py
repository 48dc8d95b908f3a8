"""ROID: weighted soft-likelihood-ratio training, consistency, weight ensembling and prior correction.

Marsden, Döbler, Yang, "Universal Test-time Adaptation through Weight Ensembling, Diversity
Weighting, and Prior Correction", WACV 2024 (https://arxiv.org/abs/2306.00650); code
mariodoebler/test-time-adaptation ``methods/roid.py``, with its CIFAR-10-C settings: Adam lr
1e-3 on BN affine; each sample weighted by diversity (against an EMA, 0.9, of the batch's mean
prediction; below-mean samples dropped) times certainty, temperature 1/3; a symmetric
cross-entropy between the sample and an augmented view; after each step the weights are
averaged with the source's (0.99); the answer is multiplied by the batch's smoothed prior.
Deviation: batch 64 instead of 200 (the loss is normalised by the actual batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simulations.peers.augment import cotta_augmentation
from simulations.peers.base import (
    AdaptationMethod,
    PixelModel,
    entropy,
    norm_affine_parameters,
    use_batch_statistics,
)


def soft_likelihood_ratio(
    logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5
) -> torch.Tensor:
    """(N,) ROID's SLR loss: -sum p log(p / (1 - p)), probabilities clipped at ``clip``."""
    probs = logits.softmax(1).clamp(0.0, clip)
    return -(probs * torch.log(probs / (1 - probs) + eps)).sum(1)


def symmetric_cross_entropy(
    x: torch.Tensor, anchor: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """(N,) the cross-entropy both ways between two views' predictions."""
    forward = -(anchor.softmax(1) * x.log_softmax(1)).sum(1)
    backward = -(x.softmax(1) * anchor.log_softmax(1)).sum(1)
    return (1 - alpha) * forward + alpha * backward


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    return (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)


class ROID(AdaptationMethod):
    """BN-affine training on diverse, certain samples, pulled back toward the source each step."""

    name = "roid"
    uses_backprop = True

    def __init__(
        self,
        model: PixelModel,
        lr: float = 1e-3,
        source_momentum: float = 0.99,
        probs_momentum: float = 0.9,
        temperature: float = 1 / 3,
        image_size: int = 32,
    ) -> None:
        super().__init__(model)
        self.model.eval()
        use_batch_statistics(self.model)
        self.model.requires_grad_(False)
        self.params = norm_affine_parameters(self.model)
        self.source = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999))
        self.source_momentum, self.probs_momentum = source_momentum, probs_momentum
        self.temperature = temperature
        self.mean_probs: torch.Tensor | None = None
        self.augment = cotta_augmentation(image_size, padding_mode="reflect", blur_and_noise=False)
        self.record(
            optimizer="Adam",
            lr=lr,
            source_momentum=source_momentum,
            probs_momentum=probs_momentum,
            temperature=temperature,
            parameters="BatchNorm affine",
        )

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """One forward, one augmented forward of the kept samples, one backward; then ensembling."""
        logits = self.model(pixels)
        probs = logits.detach().softmax(1)
        if self.mean_probs is None:
            self.mean_probs = torch.full((logits.shape[1],), 1 / logits.shape[1])
        diversity = _unit_range(1 - F.cosine_similarity(self.mean_probs.unsqueeze(0), probs, dim=1))
        keep = diversity >= diversity.mean()
        certainty = _unit_range(-entropy(logits.detach()))
        weight = torch.exp(diversity * certainty / self.temperature)
        self.mean_probs = self.probs_momentum * self.mean_probs + (
            1 - self.probs_momentum
        ) * probs.mean(0)
        n = len(pixels)
        loss = (soft_likelihood_ratio(logits[keep]) * weight[keep]).sum() / n
        if keep.any():
            augmented = self.model(self.augment(pixels[keep]))
            consistency = symmetric_cross_entropy(augmented, logits[keep])
            loss = loss + (consistency * weight[keep]).sum() / n
        kept = int(keep.sum())
        self.count(n, forwards=n + kept, backwards=n + kept)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for param, source in zip(self.params, self.source, strict=True):
                param.mul_(self.source_momentum).add_(source, alpha=1 - self.source_momentum)
        return _prior_corrected(logits.detach())

    def reset(self) -> None:
        """The source weights and a uniform prior."""
        super().reset()
        self.mean_probs = None


def _prior_corrected(logits: torch.Tensor) -> torch.Tensor:
    """ROID's prior correction: the prediction times the batch's smoothed class prior.

    The harness multiplies the logits (not the probabilities) by the prior; the argmax is
    what is scored, so we follow it.
    """
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / logits.shape[0], 1 / logits.shape[1]) / prior.max()
    return logits * ((prior + smooth) / (1 + smooth * logits.shape[1]))
