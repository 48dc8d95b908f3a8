"""CEMA's teacher adaptation on its own: one entropy step on the teacher's norm layers per 32 uploads.

Chen et al., ICLR 2024 (https://openreview.net/forum?id=vePdNU3u6n), step 1 of
``codebase/core/tta/cema.py``: SGD with momentum 0.9 on the affine parameters of every
LayerNorm, GroupNorm and BatchNorm, loss = mean entropy weighted by 1 / exp(H - E_max).
CEMA's cloud uses it before each distillation step; as a teacher callable it can also feed
U-VPA's cloud (the ``uvpa_cema_teacher`` row): it answers with the teacher as it stands
and learns from every full batch of uploads it has answered.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cloud.teacher.teacher import Teacher


def weighted_entropy(logits: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) entropy and CEMA's sample weight 1 / exp(H - E_max) (no gradient through the weight)."""
    log_p = logits.log_softmax(1)
    ent = -(log_p.exp() * log_p).sum(1)
    return ent, torch.exp(margin - ent.detach())


class AdaptingTeacher:
    """pixels -> logits from a teacher whose norm layers follow CEMA's entropy steps."""

    def __init__(
        self,
        teacher: Teacher,
        class_vectors: torch.Tensor,
        lr: float,
        momentum: float = 0.9,
        entropy_margin: float = 0.4,
        batch: int = 32,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.class_vectors = class_vectors
        self.margin = entropy_margin * math.log(len(class_vectors))
        self.batch = batch
        params = [
            p
            for m in teacher.modules()
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
            for p in (m.weight, m.bias)
            if p is not None
        ]
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        self.pending: list[torch.Tensor] = []
        self.steps = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """The current teacher's logits for ``pixels``; then learn once a batch has gathered."""
        with torch.no_grad():
            logits = self.logits(pixels)
        self.pending += list(pixels)
        while len(self.pending) >= self.batch:
            chunk, self.pending = self.pending[: self.batch], self.pending[self.batch :]
            self.step(torch.stack(chunk))
        return logits

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C) the teacher's logits, float32 on the CPU."""
        return self.teacher.logits(pixels, self.class_vectors).float().cpu()

    def step(self, pixels: torch.Tensor) -> None:
        """One SGD step of confidence-weighted entropy minimisation on the norm layers."""
        with torch.enable_grad():
            ent, weight = weighted_entropy(self.logits(pixels), self.margin)
            loss = (ent * weight).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.steps += 1
