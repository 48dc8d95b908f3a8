"""Load what a benchmark runs on: the device student and, for a distilled one, its cloud world."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cloud.adaptation.clean_set import load_clean_set
from cloud.teacher.companion import COMPANION_CHECKPOINT, load_companion
from cloud.weights_io import read_metadata
from simulations.cloud_device import CloudDeviceWorld
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


@dataclass(frozen=True)
class BenchModels:
    """The student as peers see it, the cloud world (distilled students only), a description."""

    model: PixelModel
    world: CloudDeviceWorld | None
    description: dict[str, object]


def load_bench_models(
    student_path: Path, teacher: str = "builtin", companion: Path = COMPANION_CHECKPOINT,
    clean_set: bool = False,
) -> BenchModels:  # fmt: skip
    """A label-trained student (peers only) or a distilled one (peers and cloud-device rows).

    ``clean_set``: also load the cloud's clean training set (Fashion-MNIST's training split,
    about 180 MB), which only the rows with synthetic samples use.
    """
    meta = read_metadata(
        student_path,
        kind="student checkpoint",
        make_it="cdca cloud distill",
    )
    if "embed_dim" not in meta:  # label-trained: no joint space, no teacher to learn from
        from cloud.students.checkpoint import load_student

        student, info = load_student(student_path)
        return BenchModels(PixelModel(student, info.normalization), None,
                           {"student": str(student_path), "arch": info.arch, "kind": "label-trained"})  # fmt: skip
    from cloud.distill.checkpoint import load_distilled
    from cloud.export.device_model import DeviceModel
    from cloud.teacher.factory import create_teacher

    distilled, vectors, dinfo = load_distilled(student_path)
    model = PixelModel(ClassVectorHead(distilled, vectors), dinfo.normalization)
    cloud_teacher = create_teacher(teacher)
    # only uvpa_companion needs the companion, and it says so when there is none for these
    # classes; every other row runs without it (tests use students over other classes)
    view = load_companion(companion) if companion.is_file() else None
    if view is not None and view.class_names != tuple(dinfo.class_names):
        view = None
    world = CloudDeviceWorld(DeviceModel(distilled), vectors, dinfo.normalization,
                             lambda pixels: cloud_teacher.logits(pixels, vectors),
                             None if view is None else view.probabilities,
                             load_clean_set(tuple(dinfo.class_names)) if clean_set else None)  # fmt: skip
    description: dict[str, object] = {"student": str(student_path), "arch": dinfo.arch,
                                      "kind": "distilled", "teacher": teacher}  # fmt: skip
    if view is not None:
        description["companion"] = companion.name
    return BenchModels(model, world, description)
