"""Student checkpoints: one ``.safetensors`` file whose metadata binds weights to their data contract.

The metadata (architecture, classes, normalisation, how it was trained) travels with the
weights, so nothing downstream guesses the preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cloud.students.architectures import create_student
from cloud.students.preprocess import Normalization
from cloud.weights_io import read_weights, save_weights
from protocol.errors import DataError


@dataclass(frozen=True)
class StudentInfo:
    """What a student checkpoint promises about its inputs and outputs."""

    arch: str
    class_names: tuple[str, ...]
    normalization: Normalization
    image_size: int = 32
    trained: dict[str, object] = field(default_factory=dict)  # command, seed, epochs, accuracy


def save_student(path: Path, model: nn.Module, info: StudentInfo) -> None:
    """Write weights and ``info`` to ``path`` atomically."""
    save_weights(path, dict(model.state_dict()), asdict(info))


def info_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata JSON -> constructor arguments (tuples and ``Normalization`` restored)."""
    norm = meta["normalization"]
    return {
        **meta,
        "class_names": tuple(meta["class_names"]),
        "normalization": Normalization(tuple(norm["mean"]), tuple(norm["std"])),
    }


def load_student(path: str | Path) -> tuple[nn.Module, StudentInfo]:
    """Rebuild the student from a checkpoint; raises ``DataError`` naming the fix when it cannot."""
    path = Path(path)
    tensors, meta = read_weights(
        path, kind="student checkpoint", make_it=f"cdca train student --out {path}"
    )
    try:
        info = StudentInfo(**info_fields(meta))
        model = create_student(info.arch, len(info.class_names))
        model.load_state_dict(tensors)
    except (TypeError, KeyError, RuntimeError) as err:
        raise DataError(f"{path}: weights and metadata do not fit a cdca student ({err})") from err
    model.eval()
    return model, info
