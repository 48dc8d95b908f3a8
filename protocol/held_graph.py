"""The held-statistics graph's data file, read and filled the same way on both sides; NumPy only.

``cdca cloud export`` writes the file (``cloud.export.held_graph``) and checks the graph
with values built here; the device (``device.held_stats``) builds the values it opens a
session with here too, so the layout lives in one place: float32, per norm layer in
``norm_layers`` order, the BatchNorm's weight, bias, mean and variance (``channels``
values each).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protocol.errors import DataError
from protocol.manifest import HeldGraph

HELD_INPUTS = ("x", "prompt", "input_affine", "class_vectors")  # the graph's inputs

Slices = Sequence[tuple[int, int]]  # (offset, channels) of each norm layer in the K-long inputs


def read_held_data(path: Path, slices: Slices) -> np.ndarray:
    """The data file as (4, K): weight, bias, mean and variance of every norm channel."""
    data = np.fromfile(path, dtype="<f4")
    channels = sum(count for _, count in slices)
    if data.size != 4 * channels:
        raise DataError(f"{path.name} holds {data.size} values, the manifest {4 * channels}")
    out = np.zeros((4, channels), np.float32)
    position = 0
    for offset, count in slices:
        out[:, offset : offset + count] = data[position : position + 4 * count].reshape(4, count)
        position += 4 * count
    return out


def prompted_affine(weight: np.ndarray, bias: np.ndarray, norm_affine: np.ndarray) -> np.ndarray:
    """(2, K) BatchNorm weight and bias under a prompt's (2, K) ``norm_affine``.

    The device graph's rule (``cloud.export.device_model``): the prompt scales the weight
    by ``1 + a`` and shifts the bias by ``b``.
    """
    return np.stack([weight * (1 + norm_affine[0]), bias + norm_affine[1]])


def held_initializers(held: HeldGraph, slices: Slices, values: np.ndarray) -> dict[str, np.ndarray]:
    """(4, K) weight, bias, mean and variance -> each layer's four initializers by name."""
    out: dict[str, np.ndarray] = {}
    for names, (offset, count) in zip(held.layers, slices, strict=True):
        for name, row in zip(names, values[:, offset : offset + count], strict=True):
            out[name] = np.ascontiguousarray(row, np.float32)
    return out
