"""CoTTA: continual test-time adaptation with a weight-averaged, augmentation-averaged teacher.

Wang, Fink, Van Gool, Dai, "Continual Test-Time Domain Adaptation", CVPR 2022
(https://arxiv.org/abs/2203.13591); code qinenergy/cotta ``cifar/cotta.py``.
CIFAR-10-C hyper-parameters: Adam lr 1e-3, EMA 0.999, restore probability 0.01,
augmentation threshold 0.92, 32 augmentations. Deviation: batch 64 instead of 200.
"""

from __future__ import annotations

import copy

import torch

from simulations.peers.augment import cotta_augmentation
from simulations.peers.base import AdaptationMethod, PixelModel, use_batch_statistics


class CoTTA(AdaptationMethod):
    """Student trained on the EMA teacher's (augmentation-averaged) soft labels, with stochastic restore."""

    name = "cotta"
    uses_backprop = True

    def __init__(
        self,
        model: PixelModel,
        lr: float = 1e-3,
        ema: float = 0.999,
        restore_prob: float = 0.01,
        aug_threshold: float = 0.92,
        num_augs: int = 32,
    ) -> None:
        super().__init__(model)
        self.model.train()  # CoTTA's configure_model: train mode, every parameter learns
        use_batch_statistics(self.model)
        self.model.requires_grad_(True)
        self.ema, self.restore_prob = ema, restore_prob
        self.aug_threshold, self.num_augs = aug_threshold, num_augs
        self.source = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.augment = cotta_augmentation(image_size=32)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999))
        self.record(
            optimizer="Adam",
            lr=lr,
            ema=ema,
            restore_prob=restore_prob,
            aug_threshold=aug_threshold,
            num_augs=num_augs,
            parameters="all",
        )

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Teacher predicts (augmentation-averaged when the anchor is unsure); student learns."""
        student_logits = self.model(pixels)
        with torch.no_grad():
            anchor_conf = self.anchor(pixels).softmax(1).max(1).values.mean()
            teacher_logits = self.teacher(pixels)
            n = len(pixels)
            self.count(n, forwards=3 * n, backwards=n)  # student, anchor, teacher; one backward
            if anchor_conf < self.aug_threshold:
                self.count(forwards=self.num_augs * n)
                augmented = [self.teacher(self.augment(pixels)) for _ in range(self.num_augs)]
                teacher_logits = torch.stack(augmented).mean(0)
        loss = -(teacher_logits.softmax(1) * student_logits.log_softmax(1)).sum(1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._update_teacher()
        self._stochastic_restore()
        return teacher_logits

    @torch.no_grad()
    def _update_teacher(self) -> None:
        for teacher_p, student_p in zip(
            self.teacher.parameters(), self.model.parameters(), strict=True
        ):
            teacher_p.mul_(self.ema).add_(student_p, alpha=1 - self.ema)

    @torch.no_grad()
    def _stochastic_restore(self) -> None:
        for name, param in self.model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("weight", "bias"):
                mask = torch.rand_like(param) < self.restore_prob
                param.copy_(torch.where(mask, self.source[name], param))
