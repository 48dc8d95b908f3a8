"""Distilled-student checkpoints: weights, the teacher's class vectors and the data contract."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cloud.distill.student import DistilledStudent
from cloud.students import create_student
from cloud.students.preprocess import Normalization
from protocol.errors import DataError

_META_KEY = "cdca"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    tensors[_VECTORS] = class_vectors.detach().cpu().float().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(asdict(info))})
    tmp.replace(path)


def load_distilled(path: str | Path) -> tuple[DistilledStudent, torch.Tensor, DistilledInfo]:
    """Rebuild a distilled student; returns (model in eval mode, class vectors, info)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"distilled student {path} not found; create it with `cdca cloud distill --out {path}`"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[_META_KEY])
        tensors = load_file(str(path))
        norm = meta.pop("normalization")
        info = DistilledInfo(
            **{**meta, "class_names": tuple(meta["class_names"])},
            normalization=Normalization(tuple(norm["mean"]), tuple(norm["std"])),
        )
        vectors = tensors.pop(_VECTORS)
        student = DistilledStudent(
            create_student(info.arch, len(info.class_names)), info.embed_dim, info.logit_scale
        )
        student.load_state_dict(tensors)
    except (
        SafetensorError,
        KeyError,
        TypeError,
        RuntimeError,
        json.JSONDecodeError,
        OSError,
    ) as err:
        raise DataError(f"{path} is not a usable distilled-student checkpoint ({err})") from err
    return student.eval(), vectors, info
