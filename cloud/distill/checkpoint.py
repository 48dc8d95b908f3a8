"""Distilled-student checkpoints: weights, the teacher's class vectors and the data contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cloud.distill.student import DistilledStudent
from cloud.students import create_student
from cloud.students.checkpoint import info_fields
from cloud.students.preprocess import Normalization
from cloud.weights_io import read_weights, save_weights
from protocol.errors import DataError

_VECTORS = "class_vectors"


@dataclass(frozen=True)
class DistilledInfo:
    """What the distilled student promises: encoder, joint space, classes, preprocessing."""

    arch: str
    class_names: tuple[str, ...]
    normalization: Normalization
    embed_dim: int
    logit_scale: float
    teacher: str
    image_size: int = 32
    trained: dict[str, object] = field(default_factory=dict)


def save_distilled(
    path: Path, student: DistilledStudent, class_vectors: torch.Tensor, info: DistilledInfo
) -> None:
    """Write weights, class vectors and ``info`` atomically."""
    tensors = {**student.state_dict(), _VECTORS: class_vectors.float()}
    save_weights(path, tensors, asdict(info))


def load_distilled(path: str | Path) -> tuple[DistilledStudent, torch.Tensor, DistilledInfo]:
    """Rebuild a distilled student; returns (model in eval mode, class vectors, info)."""
    path = Path(path)
    tensors, meta = read_weights(
        path, kind="distilled student", make_it=f"cdca cloud distill --out {path}"
    )
    try:
        info = DistilledInfo(**info_fields(meta))
        vectors = tensors.pop(_VECTORS)
        encoder = create_student(info.arch, len(info.class_names))
        student = DistilledStudent(encoder, info.embed_dim, info.logit_scale)
        student.load_state_dict(tensors)
    except (TypeError, KeyError, RuntimeError) as err:
        raise DataError(f"{path} is not a usable distilled-student checkpoint ({err})") from err
    return student.eval(), vectors, info
