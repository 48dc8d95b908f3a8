"""EATA: entropy minimisation on reliable, non-redundant samples, with a Fisher anti-forgetting term.

Niu, Wu, Zhang, Chen, Zheng, Zhao, Tan, "Efficient Test-Time Model Adaptation without
Forgetting", ICML 2022 (https://arxiv.org/abs/2204.02610); code mr-eggplant/EATA, run here
as the continual-TTA harness mariodoebler/test-time-adaptation ``methods/eata.py`` runs it,
with its CIFAR-10-C settings: Adam lr 1e-3, entropy margin 0.4 ln C, cosine margin 0.4,
Fisher weight 1.0 from 2,000 clean source images (the project's training split).
Deviations: batch 64 instead of 200; without source images the Fisher term is off (ETA).
Backward passes are counted as EATA's paper counts them: one per sample that passed both
filters (the batch is forwarded once; only those samples carry a gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simulations.peers.base import (
    AdaptationMethod,
    PixelModel,
    entropy,
    norm_affine_parameters,
    use_batch_statistics,
)


class RedundancyFilter:
    """EATA's Eqn. 4-5: drop samples whose prediction is too close to the running mean prediction."""

    def __init__(self, margin: float, momentum: float = 0.9) -> None:
        self.margin, self.momentum = margin, momentum
        self.mean_probs: torch.Tensor | None = None

    def keep(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C) probabilities -> boolean mask of the samples that are not redundant."""
        if self.mean_probs is None:
            keep = torch.ones(len(probs), dtype=torch.bool)
        else:
            cosine = F.cosine_similarity(self.mean_probs.unsqueeze(0), probs, dim=1)
            keep = cosine.abs() < self.margin
        if keep.any():
            new = probs[keep].mean(0)
            self.mean_probs = (
                new
                if self.mean_probs is None
                else self.momentum * self.mean_probs + (1 - self.momentum) * new
            )
        return keep


class EATA(AdaptationMethod):
    """Batch statistics; an Adam step on BN affine over the samples that pass both filters."""

    name = "eata"
    uses_backprop = True
    needs_source = True

    def __init__(
        self,
        model: PixelModel,
        source: torch.Tensor | None = None,
        lr: float = 1e-3,
        entropy_margin: float = 0.4,
        cosine_margin: float = 0.4,
        fisher_weight: float = 1.0,
    ) -> None:
        super().__init__(model)
        self.model.eval()
        use_batch_statistics(self.model)
        self.model.requires_grad_(False)
        params = norm_affine_parameters(self.model)
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
        self.filter = RedundancyFilter(cosine_margin)
        self.entropy_margin_fraction = entropy_margin
        self.fisher: list[tuple[torch.Tensor, torch.Tensor]] = []
        if source is not None and fisher_weight > 0:
            self.fisher = fisher_information(self.model, params, source)
        self.fisher_weight = fisher_weight if self.fisher else 0.0
        self.record(
            optimizer="Adam",
            lr=lr,
            entropy_margin=f"{entropy_margin} ln C",
            cosine_margin=cosine_margin,
            fisher_weight=self.fisher_weight,
            fisher_images=0 if source is None else len(source),
            parameters="BatchNorm affine",
        )

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Forward once; adapt on the reliable, non-redundant samples, entropy-weighted."""
        logits = self.model(pixels)
        ent = entropy(logits)
        margin = self.entropy_margin_fraction * math.log(logits.shape[1])
        reliable = ent < margin
        keep = torch.zeros_like(reliable)
        keep[reliable] = self.filter.keep(logits[reliable].detach().softmax(1))
        self.count(len(pixels), forwards=len(pixels), backwards=int(keep.sum()))
        if keep.any():
            weight = torch.exp(margin - ent[keep].detach())  # 1 / exp(H - E0)
            loss = (ent[keep] * weight).mean() + self._fisher_penalty()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return logits.detach()

    def _fisher_penalty(self) -> torch.Tensor:
        penalty = torch.zeros(())
        if not self.fisher:  # ETA: no source images, no anti-forgetting term
            return penalty
        for (fisher, anchor), param in zip(self.fisher, self._params(), strict=True):
            penalty = penalty + self.fisher_weight * (fisher * (param - anchor) ** 2).sum()
        return penalty

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def fisher_information(
    model: nn.Module, params: list[nn.Parameter], source: torch.Tensor, batch: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Diagonal Fisher of ``params`` on clean images (cross-entropy to the model's own argmax).

    As EATA's code: the squared gradient summed over batches, divided by the batch count.
    """
    squared = [torch.zeros_like(p) for p in params]
    batches = 0
    for start in range(0, len(source), batch):
        logits = model(source[start : start + batch])
        loss = F.cross_entropy(logits, logits.argmax(1))
        grads = torch.autograd.grad(loss, params)
        for total, grad in zip(squared, grads, strict=True):
            total += grad.detach() ** 2
        batches += 1
    return [
        (total / max(1, batches), p.detach().clone())
        for total, p in zip(squared, params, strict=True)
    ]
