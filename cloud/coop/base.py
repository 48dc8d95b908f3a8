"""``PromptLearner``: learnable context tokens that turn class names into text-encoder inputs."""

from __future__ import annotations

import abc

import torch
from torch import nn


class PromptLearner(nn.Module, abc.ABC):
    """Holds only trainable context; fixed token buffers are rebuilt from the class names."""

    @abc.abstractmethod
    def forward(self) -> torch.Tensor:
        """Prompt token embeddings, shape (num_classes, context_length, width)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Restore the context vectors captured at construction."""

    @abc.abstractmethod
    def class_vectors(self) -> torch.Tensor:
        """(num_classes, embed_dim) unit-norm text features of the current prompts."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Learnable tensors only (what a checkpoint or the wire needs)."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}
