"""A forward-only device peer: zeroth-order (SPSA) adaptation of BatchNorm affine, no cloud, no backward.

After ZOA: Deng et al., "Test-Time Model Adaptation for Quantized Neural Networks", ACM MM
2025 (https://arxiv.org/abs/2508.02180; code DengZeshuai/ZOA ``tta_library/zoa_resnet.py``):
one-sided SPSA with a segmented-uniform perturbation (|d| in [0.5, 1], c = 0.01), two forward
passes per batch, SGD on offsets of the BN scale/shift with weight decay 0.4 pulling them
back to the source; fitness = entropy + lambda (1) x the mean squared gap between each
stage's feature mean/std on the batch and on clean source images. Activation shifting from
FOA: Niu et al., "Test-Time Model Adaptation with Only Forward Passes", ICML 2024
(https://arxiv.org/abs/2404.01650; code mr-eggplant/FOA): the classifier's input moves by
(source mean - EMA 0.9 of test means). Deviations: ZOA's domain-knowledge bank (reusing
offsets learned in earlier domains) is left out; the "stages" are the inputs of every
BatchNorm (pooled over space) and of the last linear layer; learning rate 0.3 (ZOA's 1e-4
is for ResNet-50's offsets; on the compact CNN, 1e-4 to 3e-2 left the offsets where they
started, and 0.3 was the best of 1e-3 to 0.5 on a stream of five corruptions at severity 3,
docs/bench-peers.md). The device holds no model copy: the offsets and the source statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from simulations.peers.base import AdaptationMethod, PixelModel, entropy, use_batch_statistics


class FeatureTap:
    """Records the (batch, channels) pooled inputs of every BatchNorm and of the last linear layer."""

    def __init__(self, model: nn.Module) -> None:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.head = linears[-1]
        self.features: list[torch.Tensor] = []
        self.shift: torch.Tensor | None = None
        for module in norms:
            module.register_forward_pre_hook(self._record)
        self.head.register_forward_pre_hook(self._record_and_shift)

    def _record(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        self.features.append(x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x)

    def _record_and_shift(
        self, module: nn.Module, args: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        self._record(module, args)
        if self.shift is None:
            return None
        return (args[0] + self.shift, *args[1:])

    def take(self) -> list[torch.Tensor]:
        """The features of the last forward pass (and forget them)."""
        features, self.features = self.features, []
        return features


def feature_statistics(features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: the (std, mean) over the batch of each channel."""
    return [torch.std_mean(f, dim=0) for f in features]


class ForwardOnly(AdaptationMethod):
    """SPSA on BN scale/shift offsets with a source-statistics fitness, plus activation shifting."""

    name = "forward_only"
    needs_source = True

    def __init__(
        self,
        model: PixelModel,
        source: torch.Tensor | None = None,
        lr: float = 0.3,
        perturbation: float = 0.01,
        weight_decay: float = 0.4,
        fitness_lambda: float = 1.0,
        shift_momentum: float = 0.9,
        seed: int = 2020,
    ) -> None:
        super().__init__(model)
        self.model.eval().requires_grad_(False)
        use_batch_statistics(self.model)
        self.norms = [
            m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.base = torch.cat([torch.cat([m.weight, m.bias]) for m in self.norms]).clone()
        self.offset = torch.zeros_like(self.base)
        self.tap = FeatureTap(self.model)
        self.source_stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        if source is not None:
            self.source_stats = self._source_statistics(source)
        self.test_mean: torch.Tensor | None = None
        self.lr, self.c, self.weight_decay = lr, perturbation, weight_decay
        self.fitness_lambda, self.shift_momentum = fitness_lambda, shift_momentum
        self.generator = torch.Generator().manual_seed(seed)
        self.record(
            optimizer="SGD on SPSA estimates",
            lr=lr,
            perturbation=perturbation,
            weight_decay=weight_decay,
            fitness_lambda=fitness_lambda if self.source_stats else 0.0,
            shift_momentum=shift_momentum,
            source_images=0 if source is None else len(source),
            parameters="BatchNorm affine offsets",
        )

    @torch.no_grad()
    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Answer with the current offsets (pass 1), probe a perturbation (pass 2), update."""
        self.tap.shift = self._shift()
        self._load(self.offset)
        logits = self.model(pixels)
        features = self.tap.take()
        loss = self._fitness(logits, features)
        direction = self._direction()
        self._load(self.offset + self.c * direction)
        probe = self._fitness(self.model(pixels), self.tap.take())
        gradient = (probe - loss) / (self.c * direction)
        self.offset -= self.lr * (gradient + self.weight_decay * self.offset)
        self._load(self.offset)
        last = features[-1].mean(0)
        self.test_mean = (
            last
            if self.test_mean is None
            else self.shift_momentum * self.test_mean + (1 - self.shift_momentum) * last
        )
        self.count(len(pixels), forwards=2 * len(pixels))
        return logits

    def _direction(self) -> torch.Tensor:
        """ZOA's segmented uniform: magnitude in [0.5, 1], random sign."""
        size = self.offset.shape
        magnitude = (torch.rand(size, generator=self.generator) + 1) / 2
        sign = torch.randint(0, 2, size, generator=self.generator) * 2 - 1
        return magnitude * sign

    def _fitness(self, logits: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        loss = entropy(logits).mean()
        if self.source_stats:
            gaps = [
                ((std - s_std) ** 2).mean() + ((mean - s_mean) ** 2).mean()
                for (std, mean), (s_std, s_mean) in zip(
                    feature_statistics(features), self.source_stats, strict=True
                )
            ]
            loss = loss + self.fitness_lambda * torch.stack(gaps).mean()
        return loss

    def _shift(self) -> torch.Tensor | None:
        if self.test_mean is None or not self.source_stats:
            return None
        return self.source_stats[-1][1] - self.test_mean

    def _load(self, offset: torch.Tensor) -> None:
        values = self.base + offset
        start = 0
        for module in self.norms:
            for param in (module.weight, module.bias):
                param.copy_(values[start : start + param.numel()])
                start += param.numel()

    @torch.no_grad()
    def _source_statistics(self, source: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        features: list[list[torch.Tensor]] = []
        for start in range(0, len(source), 64):
            self.model(source[start : start + 64])
            features.append(self.tap.take())
        layers = [torch.cat(per_layer) for per_layer in zip(*features, strict=True)]
        return feature_statistics(layers)
