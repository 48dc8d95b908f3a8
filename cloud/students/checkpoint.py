"""Student checkpoints: one ``.safetensors`` file whose metadata binds weights to their data contract.

The metadata (architecture, classes, normalisation, how it was trained) travels with the
weights, so nothing downstream guesses the preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from cloud.students.architectures import create_student
from cloud.students.preprocess import Normalization
from protocol.errors import DataError

_META_KEY = "cdca"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(asdict(info))})
    tmp.replace(path)


def load_student(path: str | Path) -> tuple[nn.Module, StudentInfo]:
    """Rebuild the student from a checkpoint; raises ``DataError`` naming the fix when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"student checkpoint {path} not found; train one with `cdca train student --out {path}`"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[_META_KEY])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise DataError(f"{path} is not a cdca student checkpoint ({err})") from err
    norm = meta.pop("normalization")
    info = StudentInfo(
        **{**meta, "class_names": tuple(meta["class_names"])},
        normalization=Normalization(tuple(norm["mean"]), tuple(norm["std"])),
    )
    model = create_student(info.arch, len(info.class_names))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise DataError(f"{path}: weights do not fit architecture {info.arch!r}: {err}") from err
    model.eval()
    return model, info
