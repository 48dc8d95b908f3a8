"""The device student as on-device peers see it: images in, logits out, BatchNorms to adapt."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cloud.weights_io import read_metadata
from protocol.config.project import ProjectConfig
from protocol.errors import ConfigError, DataError
from simulations.peers import PixelModel

SOURCE_IMAGES = (
    2000  # clean images EATA's Fisher and the forward-only statistics read (EATA's count)
)


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


def source_images(
    project: ProjectConfig, student: Path, count: int = SOURCE_IMAGES
) -> torch.Tensor | None:
    """The first ``count`` clean training images (EATA's Fisher, forward-only statistics).

    None (the methods then run without them) when the project's training split cannot be
    loaded or holds other classes than the student's; the run's record shows it
    (``fisher_images=0``, ``source_images=0``).
    """
    from cloud.data.splits import load_split
    from cloud.students.preprocess import pixels_from_uint8

    try:
        clean = load_split(project.data, "train", limit=count)
    except (DataError, ConfigError) as err:
        print(f"… EATA and forward_only run without source images: {err}")
        return None
    if tuple(clean.class_names) != class_names(student):
        print("… EATA and forward_only run without source images: data.train holds other classes")
        return None
    return pixels_from_uint8(clean.images)


def class_names(student: Path) -> tuple[str, ...]:
    """The student's classes, from its checkpoint."""
    meta = read_metadata(student, kind="student checkpoint", make_it="cdca cloud distill")
    return tuple(meta.get("class_names", ()))
