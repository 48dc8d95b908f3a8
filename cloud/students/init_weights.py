"""Start a student from weights the user has (``student.init``): safetensors or a torch state dict.

A user may own pretrained weights for the architecture (torchvision's ImageNet ResNet-18,
their own earlier model). Tensors are matched by name and shape; the ones that differ
(the classifier of another class count, a 3x3 stem) keep their random start, and the
counts are logged so nothing is skipped silently. No file matching at all is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from protocol.errors import DataError

log = logging.getLogger(__name__)


# a distilled student's encoder is a student: its names start with "encoder."
DISTILLED_RENAME = (("encoder.", ""),)


def load_init_weights(model: nn.Module, path: Path) -> int:
    """Copy the tensors of ``path`` that fit ``model`` by name and shape; returns how many.

    Names are tried as they are, then through the model's ``TORCHVISION_RENAMES`` (prefix
    pairs from torchvision's names to cdca's wrapper) and from a distilled student's.
    """
    tensors = _read(path)
    own = model.state_dict()
    renames = (*getattr(model, "TORCHVISION_RENAMES", ()), *DISTILLED_RENAME)
    matched = {}
    for name, tensor in tensors.items():
        candidates = [name] + [
            new + name[len(old) :] for old, new in renames if name.startswith(old)
        ]
        for candidate in candidates:
            if candidate in own and own[candidate].shape == tensor.shape:
                matched[candidate] = tensor
                break
    if not matched:
        raise DataError(
            f"{path}: none of its {len(tensors)} tensors fits the student's "
            "architecture by name and shape; is it for student.arch?"
        )
    model.load_state_dict(matched, strict=False)
    log.info(
        "student.init: %d of the student's %d tensors from %s (%d of the file's unused)",
        len(matched),
        len(own),
        path,
        len(tensors) - len(matched),
    )
    return len(matched)


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"student.init {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and zip errors differ by version
        raise DataError(f"cannot read student.init {path}: {err}") from err
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise DataError(f"{path} is not a state dict (name -> tensor)")
    return loaded
