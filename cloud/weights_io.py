"""Safetensors files with a JSON metadata entry: the one format every cdca checkpoint uses.

Weights are written atomically (temporary file, then rename) and read back with a
``DataError`` that says which command makes a good file, never a bare library exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from protocol.errors import DataError

META_KEY = "cdca"


def save_weights(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (moved to CPU, contiguous) and ``meta`` (as JSON) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(cpu, str(tmp), metadata={META_KEY: json.dumps(meta)})
    tmp.replace(path)


def read_weights(
    path: Path, *, kind: str, make_it: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by ``save_weights``.

    Args:
        path: the file.
        kind: what it should be, for messages ("student checkpoint").
        make_it: the command that produces one, for messages.

    Raises:
        DataError: missing file, not safetensors, or no cdca metadata.
    """
    meta = read_metadata(path, kind=kind, make_it=make_it)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DataError(
            f"{path} is not a usable {kind} ({err}); recreate it with `{make_it}`"
        ) from err
    return tensors, meta


def read_metadata(path: Path, *, kind: str, make_it: str) -> dict[str, Any]:
    """Only the cdca metadata of a ``save_weights`` file (cheap: no tensors are loaded)."""
    if not path.is_file():
        raise DataError(f"{kind} {path} not found; create it with `{make_it}`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta: dict[str, Any] = json.loads((handle.metadata() or {})[META_KEY])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise DataError(
            f"{path} is not a usable {kind} ({err}); recreate it with `{make_it}`"
        ) from err
    return meta
