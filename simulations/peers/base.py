"""The lifecycle every adaptation method follows on a stream: predict, then adapt, never reset.

Methods receive image batches as (batch, 3, H, W) float32 in [0, 1]; the wrapped model
normalises internally (``PixelModel``), so input-space methods (prompts, augmentations)
work in pixel units.
"""

from __future__ import annotations

import abc
import copy

import torch
from torch import nn

from cloud.students.preprocess import Normalization


class PixelModel(nn.Module):
    """A student that takes [0, 1] pixels: normalisation is its first step."""

    def __init__(self, student: nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.student = student
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(normalization.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalization.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) in [0, 1] -> (batch, num_classes) logits."""
        return self.student((pixels - self.mean) / self.std)


class AdaptationMethod(abc.ABC):
    """One online, continual test-time adaptation method.

    Subclasses set ``name`` and implement ``step``; the constructor copies the model so a
    method never changes the caller's weights.
    """

    name: str = "base"
    uses_backprop: bool = False  # whether the device would need to train

    def __init__(self, model: PixelModel) -> None:
        self.model = copy.deepcopy(model)
        self._initial_state = copy.deepcopy(self.model.state_dict())

    @abc.abstractmethod
    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict the batch, then adapt on it; returns the (batch, num_classes) prediction logits."""

    def costs(self) -> dict[str, float]:
        """On-device methods upload nothing and receive nothing."""
        return {"upload_fraction": 0.0, "bytes_up_per_1000": 0.0, "bytes_down_per_1000": 0.0}

    def reset(self) -> None:
        """Restore the source weights (the continual protocol never calls this mid-stream)."""
        self.model.load_state_dict(self._initial_state)


def use_batch_statistics(model: nn.Module) -> None:
    """Make every BatchNorm normalise with the current batch's statistics (BN-adapt, Tent, CoTTA)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(batch, classes) logits -> (batch,) Shannon entropy of the softmax, in nats."""
    log_p = logits.log_softmax(1)
    return -(log_p.exp() * log_p).sum(1)
