"""SAR: sharpness-aware, reliable entropy minimisation with model recovery.

Niu, Wu, Zhang, Wen, Chen, Zhao, Tan, "Towards Stable Test-Time Adaptation in Dynamic Wild
World", ICLR 2023 (https://openreview.net/pdf?id=g2YraF75Tj); code mr-eggplant/SAR, run here
as mariodoebler/test-time-adaptation ``methods/sar.py`` runs it on CIFAR-10-C: SAM (rho 0.05)
around SGD lr 1e-3, momentum 0.9; reliable samples have entropy below 0.4 ln C, filtered again
after the ascent step; the model is reset to the source when the moving average (0.9) of the
second loss falls below 0.2. Deviations: batch 64 instead of 200; every BatchNorm adapts
(the harness skips ResNet's last stage, which the compact CNN does not have).
"""

from __future__ import annotations

import math

import torch

from simulations.peers.base import (
    AdaptationMethod,
    PixelModel,
    entropy,
    norm_affine_parameters,
    use_batch_statistics,
)


class SAM:
    """Sharpness-aware minimisation around SGD (Foret et al., ICLR 2021; davda54/sam)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float, rho: float):
        self.params, self.rho = params, rho
        self.base = torch.optim.SGD(params, lr=lr, momentum=momentum)
        self._origin: list[torch.Tensor] = []

    @torch.no_grad()
    def ascend(self) -> None:
        """Move to ``w + rho * g / |g|``, the worst nearby point."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(2) for g in grads])) if grads else torch.zeros(())
        scale = self.rho / (norm + 1e-12)
        self._origin = [p.detach().clone() for p in self.params]
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad * scale)
        self.zero_grad()

    @torch.no_grad()
    def descend(self) -> None:
        """Back to ``w``, then the SGD step with the gradient taken at the worst point."""
        for p, origin in zip(self.params, self._origin, strict=True):
            p.copy_(origin)
        self.base.step()
        self.zero_grad()

    def zero_grad(self) -> None:
        """Clear every gradient."""
        self.base.zero_grad(set_to_none=True)


class SAR(AdaptationMethod):
    """Batch statistics; a SAM step on BN affine over reliable samples; reset on collapse."""

    name = "sar"
    uses_backprop = True

    def __init__(
        self,
        model: PixelModel,
        lr: float = 1e-3,
        momentum: float = 0.9,
        rho: float = 0.05,
        entropy_margin: float = 0.4,
        reset_below: float = 0.2,
    ) -> None:
        super().__init__(model)
        self.model.eval()
        use_batch_statistics(self.model)
        self.model.requires_grad_(False)
        self.optimizer = SAM(norm_affine_parameters(self.model), lr, momentum, rho)
        self.entropy_margin_fraction, self.reset_below = entropy_margin, reset_below
        self.loss_ema: float | None = None
        self.resets = 0
        self._adapted_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.record(
            optimizer="SAM(SGD)",
            lr=lr,
            momentum=momentum,
            rho=rho,
            entropy_margin=f"{entropy_margin} ln C",
            reset_below=reset_below,
            parameters="BatchNorm affine",
        )

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Two forwards and two backwards over the reliable samples; the first forward answers."""
        logits = self.model(pixels)
        margin = self.entropy_margin_fraction * math.log(logits.shape[1])
        ent = entropy(logits)
        reliable = ent < margin
        self.count(len(pixels), forwards=len(pixels))
        if reliable.any():
            ent[reliable].mean().backward()
            self.optimizer.ascend()
            second = entropy(self.model(pixels))[reliable]
            still = second < margin
            self.count(forwards=len(pixels), backwards=int(reliable.sum()) + int(still.sum()))
            if still.any():
                loss = second[still].mean()
                value = float(loss.detach())
                self.loss_ema = (
                    value if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * value
                )
                loss.backward()
            self.optimizer.descend()
            if self.loss_ema is not None and self.loss_ema < self.reset_below:
                self.model.load_state_dict(self._adapted_state)
                self.optimizer = SAM(
                    self.optimizer.params,
                    self.hyperparameters["lr"],  # type: ignore[arg-type]
                    self.hyperparameters["momentum"],  # type: ignore[arg-type]
                    self.optimizer.rho,
                )
                self.loss_ema, self.resets = None, self.resets + 1
        return logits.detach()
