"""The device student as on-device peers see it: images in, logits out, BatchNorms to adapt."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cloud.weights_io import read_metadata
from simulations.peers import PixelModel


class ClassVectorHead(nn.Module):
    """A distilled student with its class vectors bound in: images -> logits, like any student."""

    def __init__(self, student: nn.Module, class_vectors: torch.Tensor) -> None:
        super().__init__()
        self.student = student
        self.class_vectors: torch.Tensor
        self.register_buffer("class_vectors", class_vectors.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised -> (batch, classes) logits."""
        out: torch.Tensor = self.student(x, self.class_vectors)
        return out


def is_distilled(path: Path) -> bool:
    """Whether a student checkpoint is distilled (has a teacher's joint space), from its metadata."""
    return "embed_dim" in read_metadata(
        path, kind="student checkpoint", make_it="cdca cloud distill"
    )


def load_student_model(path: Path) -> PixelModel:
    """A label-trained or distilled student checkpoint as the peers' ``PixelModel``."""
    if not is_distilled(path):
        from cloud.students.checkpoint import load_student

        student, info = load_student(path)
        return PixelModel(student, info.normalization)
    from cloud.distill.checkpoint import load_distilled

    distilled, vectors, distilled_info = load_distilled(path)
    return PixelModel(ClassVectorHead(distilled, vectors), distilled_info.normalization)
