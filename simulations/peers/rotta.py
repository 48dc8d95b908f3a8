"""RoTTA: robust batch normalisation, a category-balanced memory and a timeliness-weighted teacher.

Yuan, Xie, Li, "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023
(https://arxiv.org/abs/2303.13899); code BIT-DA/RoTTA, run here as
mariodoebler/test-time-adaptation ``methods/rotta.py`` runs it on CIFAR-10-C: robust BN with
statistics momentum 0.05, a 64-sample memory (CSTU: per-class slots, evict by age and
uncertainty, lambda_t = lambda_u = 1), one Adam step (lr 1e-3) every 64 frames on strongly
augmented memory samples against the EMA teacher (momentum 0.999) weighted by timeliness;
the teacher answers. Deviation: batch 64 instead of 200 (the update every 64 frames is the
same).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from simulations.peers.augment import cotta_augmentation
from simulations.peers.base import AdaptationMethod, PixelModel


class RobustBatchNorm(nn.Module):
    """BatchNorm whose statistics follow the test batches by a momentum (train mode only)."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, momentum: float) -> None:
        super().__init__()
        assert source.running_mean is not None
        assert source.running_var is not None
        self.register_buffer("mean", source.running_mean.detach().clone())
        self.register_buffer("var", source.running_var.detach().clone())
        self.mean: torch.Tensor
        self.var: torch.Tensor
        self.weight = nn.Parameter(source.weight.detach().clone())
        self.bias = nn.Parameter(source.bias.detach().clone())
        self.momentum, self.eps = momentum, source.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the running estimate, first moved toward this batch when training."""
        shape = (1, -1, *([1] * (x.ndim - 2)))
        mean, var = self.mean, self.var
        if self.training:
            batch_var, batch_mean = torch.var_mean(x, dim=(0, *range(2, x.ndim)), unbiased=False)
            mean = (1 - self.momentum) * self.mean + self.momentum * batch_mean
            var = (1 - self.momentum) * self.var + self.momentum * batch_var
            self.mean, self.var = mean.detach(), var.detach()
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


def swap_robust_batchnorms(model: nn.Module, momentum: float) -> None:
    """Replace every BatchNorm of ``model`` in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, RobustBatchNorm(child, momentum))


@dataclass
class _Slot:
    image: torch.Tensor
    uncertainty: float
    age: int = 0


class BalancedMemory:
    """CSTU: category-balanced sampling with timeliness and uncertainty (RoTTA's memory bank)."""

    def __init__(self, capacity: int, num_classes: int, lambda_t: float, lambda_u: float) -> None:
        self.capacity, self.num_classes = capacity, num_classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.slots: list[list[_Slot]] = [[] for _ in range(num_classes)]

    def add(self, image: torch.Tensor, label: int, uncertainty: float) -> None:
        """Store one sample if it scores better than the one it would evict; everything ages."""
        score = self._score(0, uncertainty)
        if self._make_room(label, score):
            self.slots[label].append(_Slot(image, uncertainty))
        for slots in self.slots:
            for slot in slots:
                slot.age += 1

    def contents(self) -> tuple[list[torch.Tensor], list[float]]:
        """Images and ages (in capacities) of every stored sample."""
        items = [slot for slots in self.slots for slot in slots]
        return [s.image for s in items], [s.age / self.capacity for s in items]

    def _score(self, age: int, uncertainty: float) -> float:
        timeliness = 1 / (1 + math.exp(-age / self.capacity))
        return self.lambda_t * timeliness + self.lambda_u * uncertainty / math.log(self.num_classes)

    def _make_room(self, label: int, score: float) -> bool:
        occupied = sum(len(s) for s in self.slots)
        if len(self.slots[label]) < self.capacity / self.num_classes:
            if occupied < self.capacity:
                return True
            most = max(len(s) for s in self.slots)
            return self._evict([c for c, s in enumerate(self.slots) if len(s) == most], score)
        return self._evict([label], score)

    def _evict(self, classes: list[int], score: float) -> bool:
        worst: tuple[float, int, int] | None = None
        for c in classes:
            for i, slot in enumerate(self.slots[c]):
                value = self._score(slot.age, slot.uncertainty)
                if worst is None or value >= worst[0]:
                    worst = (value, c, i)
        if worst is None:
            return True
        if worst[0] > score:
            self.slots[worst[1]].pop(worst[2])
            return True
        return False


class RoTTA(AdaptationMethod):
    """Robust BN student trained on the memory against an EMA teacher, which answers."""

    name = "rotta"
    uses_backprop = True

    def __init__(
        self,
        model: PixelModel,
        lr: float = 1e-3,
        memory_size: int = 64,
        update_every: int = 64,
        bn_momentum: float = 0.05,
        teacher_momentum: float = 0.999,
        lambda_t: float = 1.0,
        lambda_u: float = 1.0,
        image_size: int = 32,
    ) -> None:
        super().__init__(model)
        self.model.requires_grad_(False)
        swap_robust_batchnorms(self.model, bn_momentum)
        params = [
            p
            for m in self.model.modules()
            if isinstance(m, RobustBatchNorm)
            for p in (m.weight, m.bias)
        ]
        for p in params:
            p.requires_grad_(True)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
        self.memory: BalancedMemory | None = None
        self.memory_size, self.lambda_t, self.lambda_u = memory_size, lambda_t, lambda_u
        self.update_every, self.teacher_momentum = update_every, teacher_momentum
        self.augment = cotta_augmentation(image_size=image_size)
        self.seen = 0
        self.record(
            optimizer="Adam",
            lr=lr,
            memory_size=memory_size,
            update_every=update_every,
            bn_momentum=bn_momentum,
            teacher_momentum=teacher_momentum,
            lambda_t=lambda_t,
            lambda_u=lambda_u,
            parameters="robust BatchNorm affine",
        )

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher answers; samples enter the memory; every ``update_every`` frames, one step."""
        with torch.no_grad():
            self.model.eval()
            self.teacher.eval()
            answer = self.teacher(pixels)
            probs = answer.softmax(1)
            uncertainty = -(probs * torch.log(probs + 1e-6)).sum(1)
        if self.memory is None:
            self.memory = BalancedMemory(
                self.memory_size, answer.shape[1], self.lambda_t, self.lambda_u
            )
        self.count(len(pixels), forwards=len(pixels))
        for image, label, unc in zip(pixels, probs.argmax(1), uncertainty, strict=True):
            self.memory.add(image, int(label), float(unc))
            self.seen += 1
            if self.seen % self.update_every == 0:
                self._update()
        return answer

    def _update(self) -> None:
        assert self.memory is not None
        images, ages = self.memory.contents()
        if not images:
            return
        self.model.train()
        self.teacher.train()
        batch = torch.stack(images)
        with torch.no_grad():
            target = self.teacher(batch).softmax(1)
        student = self.model(self.augment(batch))
        age = torch.tensor(ages)
        weight = torch.exp(-age) / (1 + torch.exp(-age))
        loss = (-(target * student.log_softmax(1)).sum(1) * weight).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.count(forwards=2 * len(batch), backwards=len(batch))
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.model.parameters(), strict=True):
                t.mul_(self.teacher_momentum).add_(s, alpha=1 - self.teacher_momentum)
