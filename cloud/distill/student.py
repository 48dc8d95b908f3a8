"""The distilled device student: a small image encoder plus a projector into the teacher's space.

Li et al., "PromptKD: Unsupervised Prompt Distillation for Vision-Language Models", CVPR
2024 (https://arxiv.org/abs/2403.02781); code zhengli97/PromptKD ``trainers/promptkd.py``.
The student never sees text: its logits are the scaled cosine similarity of its projected
image feature to class vectors the teacher computed once (text features of the learned
prompts). Class vectors are an input, so the cloud can send new ones without a new model.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """PromptKD's projector: Linear -> BatchNorm -> ReLU -> Linear (1x1 convs in the original)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_dim) -> (batch, out_dim)."""
        return self.net(x)


class DistilledStudent(nn.Module):
    """Encoder features -> projector -> unit-norm embedding; logits against class vectors.

    Args:
        encoder: a student from ``cloud.students`` (its ``forward_features`` is used).
        embed_dim: the teacher's joint-space width.
        logit_scale: the teacher's (exponentiated) temperature, kept fixed.
    """

    def __init__(self, encoder: nn.Module, embed_dim: int, logit_scale: float) -> None:
        super().__init__()
        self.encoder: Any = encoder  # a cdca student: forward_features() and feature_dim
        self.projector = Projector(int(cast(Any, encoder).feature_dim), embed_dim)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.logit_scale: torch.Tensor

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, embed_dim) unit-norm embeddings."""
        return F.normalize(self.projector(self.encoder.forward_features(x)), dim=-1)

    def forward(self, x: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """(batch, num_classes) logits for ``class_vectors`` of shape (num_classes, embed_dim)."""
        return self.logit_scale * self.embed(x) @ class_vectors.T
