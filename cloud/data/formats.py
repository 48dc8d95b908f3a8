"""Corrupted benchmarks on disk: the CIFAR-10-C ``.npy`` layout and the ImageNet-C folder layout.

CIFAR-10-C layout (also CIFAR-100-C and our Fashion-MNIST-C): one ``<corruption>.npy`` of
shape (5 * N, H, W, 3) uint8 whose rows ``[(s - 1) * N, s * N)`` are severity ``s``, and a
``labels.npy`` of length N or 5 * N. ImageNet-C layout:
``<root>/<corruption>/<severity>/<wnid>/*.JPEG``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from cloud.data import class_names as known_classes
from cloud.data.images import list_images, read_image
from cloud.data.labelled import LabelledImages
from protocol.errors import ConfigError, DataError, unknown_name

NUM_SEVERITIES = 5
METADATA_FILE = "dataset.json"


class CorruptedDataset(Protocol):
    """A set of (corruption, severity) domains over the same labelled images."""

    name: str

    @property
    def class_names(self) -> Sequence[str]:
        """One name per class, index = label."""

    def corruptions(self) -> list[str]:
        """The corruptions present on disk."""

    def count(self, corruption: str) -> int:
        """Images per severity of one corruption."""

    def load(
        self, corruption: str, severity: int, count: int | None = None, offset: int = 0
    ) -> LabelledImages:
        """Images ``offset .. offset + count`` of one domain."""


class NpyCorruptedDataset:
    """A folder in the CIFAR-10-C layout, memory-mapped so that only used rows are read."""

    def __init__(self, root: str | Path, class_names: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"benchmark folder {self.root} does not exist; create it with "
                f"`cdca data prepare --out {self.root}` or point to a CIFAR-10-C folder"
            )
        self.name = self.root.name
        self._class_names = class_names

    @cached_property
    def labels(self) -> np.ndarray:
        """(N,) or (5 * N,) int64 labels from ``labels.npy``."""
        labels = _load_npy(self.root / "labels.npy")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{self.root / 'labels.npy'} must be a 1-D integer array, got "
                f"{labels.dtype} {labels.shape}"
            )
        return np.asarray(labels, dtype=np.int64)

    @property
    def class_names(self) -> Sequence[str]:
        """From the constructor, ``dataset.json``, the folder name (cifar10/100) or the labels."""
        if self._class_names is not None:
            return self._class_names
        meta = self.root / METADATA_FILE
        if meta.is_file():
            return tuple(json.loads(meta.read_text())["class_names"])
        lowered = self.name.lower()
        if "cifar-100" in lowered or "cifar100" in lowered:
            return known_classes.CIFAR100
        if "cifar-10" in lowered or "cifar10" in lowered:
            return known_classes.CIFAR10
        return tuple(f"class_{i}" for i in range(int(self.labels.max()) + 1))

    def corruptions(self) -> list[str]:
        """Every ``<name>.npy`` except the labels, sorted."""
        return sorted(p.stem for p in self.root.glob("*.npy") if p.stem != "labels")

    def count(self, corruption: str) -> int:
        """Images per severity (read from the file's header, no pixels loaded)."""
        path = self.root / f"{corruption}.npy"
        if not path.is_file():
            raise unknown_name(f"corruption in {self.root}", corruption, self.corruptions())
        return self._check_layout(path, _load_npy(path))

    def load(
        self, corruption: str, severity: int, count: int | None = None, offset: int = 0
    ) -> LabelledImages:
        """Rows of one severity block; see ``CorruptedDataset.load``."""
        if severity not in range(1, NUM_SEVERITIES + 1):
            raise ConfigError(f"severity must be 1..5, got {severity!r}")
        path = self.root / f"{corruption}.npy"
        if not path.is_file():
            raise unknown_name(f"corruption in {self.root}", corruption, self.corruptions())
        images = _load_npy(path)
        per_severity = self._check_layout(path, images)
        start = (severity - 1) * per_severity + offset
        stop = (severity - 1) * per_severity + (per_severity if count is None else offset + count)
        if offset < 0 or stop > severity * per_severity:
            raise ConfigError(
                f"{path.name} has {per_severity} images per severity; asked for "
                f"{offset}..{stop - (severity - 1) * per_severity}"
            )
        labels = self.labels[start:stop] if len(self.labels) > per_severity else (
            self.labels[start - (severity - 1) * per_severity : stop - (severity - 1) * per_severity]
        )
        return LabelledImages(
            np.ascontiguousarray(images[start:stop]), labels, self.class_names,
            name=f"{corruption}-{severity}",
        )

    def _check_layout(self, path: Path, images: np.ndarray) -> int:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(
                f"{path} must hold (5*N, H, W, 3) uint8 images (CIFAR-10-C layout), got "
                f"{images.dtype} {images.shape}; regenerate it with `cdca data prepare --force`"
            )
        if images.shape[0] % NUM_SEVERITIES:
            raise DataError(f"{path} has {images.shape[0]} rows, not a multiple of 5 severities")
        per_severity = images.shape[0] // NUM_SEVERITIES
        if len(self.labels) not in (per_severity, images.shape[0]):
            raise DataError(
                f"{path} has {per_severity} images per severity but labels.npy has "
                f"{len(self.labels)} entries (expected {per_severity} or {images.shape[0]})"
            )
        return per_severity


class ImageNetCDataset:
    """A folder in the ImageNet-C layout; images are read on demand and centre-cropped."""

    def __init__(self, root: str | Path, image_size: int = 224) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"ImageNet-C folder {self.root} does not exist")
        self.name = self.root.name
        self.image_size = image_size

    @cached_property
    def class_names(self) -> Sequence[str]:
        """The class folder names (WordNet ids) of the first domain, sorted."""
        domains = self.corruptions()
        if not domains:
            raise DataError(f"{self.root} has no <corruption>/<severity>/<class>/ folders")
        first = self.root / domains[0]
        severity_dir = next(p for p in sorted(first.iterdir()) if p.is_dir())
        return tuple(sorted(p.name for p in severity_dir.iterdir() if p.is_dir()))

    def count(self, corruption: str) -> int:
        """Images of severity 1 of one corruption."""
        folder = self.root / corruption / "1"
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist (expected <corruption>/<severity>/<class>/)")
        return sum(len(list_images(p)) for p in folder.iterdir() if p.is_dir())

    def corruptions(self) -> list[str]:
        """Sub-folders that contain severity folders."""
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and any(
                (p / str(s)).is_dir() for s in range(1, NUM_SEVERITIES + 1)
            )
        )

    def load(
        self, corruption: str, severity: int, count: int | None = None, offset: int = 0
    ) -> LabelledImages:
        """A fixed pseudo-random interleaving of the classes, so any prefix mixes them."""
        folder = self.root / corruption / str(severity)
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist (expected <corruption>/<severity>/<class>/)")
        items = [
            (path, label)
            for label, wnid in enumerate(self.class_names)
            if (folder / wnid).is_dir()
            for path in list_images(folder / wnid)
        ]
        order = np.random.default_rng(0).permutation(len(items))
        chosen = [items[i] for i in order[offset : None if count is None else offset + count]]
        images = np.stack([read_image(p, self.image_size) for p, _ in chosen]) if chosen else (
            np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        )
        labels = np.array([label for _, label in chosen], dtype=np.int64)
        return LabelledImages(images, labels, self.class_names, name=f"{corruption}-{severity}")


def open_benchmark(spec: str | Path) -> CorruptedDataset:
    """Open a corrupted benchmark from ``[kind:]PATH``.

    Kinds: ``npy`` (CIFAR-10-C layout, also ``cifar10-c``, ``cifar100-c``,
    ``fashion-mnist-c``) and ``imagenet-c``. Without a kind the layout is detected.
    """
    kind, _, path = str(spec).partition(":") if ":" in str(spec) else ("", "", str(spec))
    root = Path(path)
    if kind == "cifar10-c":
        return NpyCorruptedDataset(root, known_classes.CIFAR10)
    if kind == "cifar100-c":
        return NpyCorruptedDataset(root, known_classes.CIFAR100)
    if kind in ("npy", "fashion-mnist-c"):
        return NpyCorruptedDataset(root)
    if kind == "imagenet-c":
        return ImageNetCDataset(root)
    if kind:
        raise unknown_name(
            "benchmark kind", kind, ["npy", "cifar10-c", "cifar100-c", "fashion-mnist-c", "imagenet-c"]
        )
    if (root / "labels.npy").is_file() or not root.exists():
        return NpyCorruptedDataset(root)
    return ImageNetCDataset(root)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} is missing; run `cdca data prepare` or check the folder")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path} is not a readable .npy file ({err}); delete it and run "
            "`cdca data prepare` again"
        ) from err
