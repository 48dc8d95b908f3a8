"""Fashion-MNIST, found offline first: ``--data-dir``/``CDCA_DATA``, the Debian package, then torchvision.

Images come back padded from 28 to 32 px and replicated to RGB, the shape every cdca
model and corruption expects: (N, 32, 32, 3) uint8.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cloud.data.labelled import LabelledImages
from protocol.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_DIR = Path.home() / ".cache" / "cdca" / "torchvision"
_PREFIX = {"train": "train", "test": "t10k"}
_PAD = 2  # 28 + 2 * 2 = 32


def load_fashion_mnist(
    split: str, data_dir: str | Path | None = None, *, allow_download: bool = True,
    padded: bool = True,
) -> LabelledImages:
    """Load one Fashion-MNIST split as 32x32 RGB (28x28 with ``padded=False``).

    Looks in ``data_dir`` (or ``$CDCA_DATA``), then in the Debian package's folder, then
    downloads through torchvision when ``allow_download`` and online.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: a folder holding the four IDX files (``.gz`` or not), or torchvision's
            ``FashionMNIST/raw`` tree.
        allow_download: try torchvision's download as the last resort.

    Returns:
        ``LabelledImages`` with images (N, 32, 32, 3) uint8 and labels (N,) int64.

    Raises:
        DataError: no source worked; the message names all three and how to fix each.
    """
    if split not in _PREFIX:
        raise ConfigError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    tried: list[str] = []
    for folder in _candidate_dirs(data_dir):
        found = _find_idx_pair(folder, split)
        if found is not None:
            logger.info("Fashion-MNIST %s from %s", split, folder)
            return _read_pair(*found, split=split, padded=padded)
        tried.append(str(folder))
    if allow_download:
        folder = _download_with_torchvision(tried)
        found = _find_idx_pair(folder, split)
        if found is not None:
            return _read_pair(*found, split=split, padded=padded)
    raise DataError(_not_found_message(tried, allow_download))


def _candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs: list[Path] = []
    explicit = data_dir if data_dir is not None else os.environ.get("CDCA_DATA")
    if explicit:
        root = Path(explicit)
        dirs += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    dirs += [DEBIAN_DIR, DOWNLOAD_DIR / "FashionMNIST" / "raw"]
    return dirs


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = _PREFIX[split]
    images = _first_existing(folder, f"{prefix}-images-idx3-ubyte")
    labels = _first_existing(folder, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images and labels else None


def _first_existing(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_pair(images_path: Path, labels_path: Path, *, split: str, padded: bool) -> LabelledImages:
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            "labels; re-install the dataset (apt-get install --reinstall dataset-fashion-mnist)"
        )
    if padded:
        images = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    rgb = np.repeat(images[..., np.newaxis], 3, axis=-1)
    return LabelledImages(rgb, labels, CLASS_NAMES, name=f"fashion-mnist-{split}")


def read_idx(path: Path, *, expected_ndim: int) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, as uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if ndim != expected_ndim:
        raise DataError(f"{path} has {ndim} dimensions, expected {expected_ndim}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DataError(f"{path} is truncated: {len(raw) - offset} bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _download_with_torchvision(tried: Sequence[str]) -> Path:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as err:
        raise DataError(_not_found_message(tried, allow_download=False)) from err
    try:
        FashionMNIST(str(DOWNLOAD_DIR), train=True, download=True)
        FashionMNIST(str(DOWNLOAD_DIR), train=False, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError when offline
        raise DataError(
            _not_found_message(tried, allow_download=True) + f"\n  (download failed: {err})"
        ) from err
    return DOWNLOAD_DIR / "FashionMNIST" / "raw"


def _not_found_message(tried: Sequence[str], allow_download: bool) -> str:
    download = (
        "3. download through torchvision: needs internet access and the cloud extra "
        "(pip install 'cdca[cloud]')"
        if allow_download
        else "3. download through torchvision: disabled for this call"
    )
    return (
        "Fashion-MNIST not found. Looked in: " + ", ".join(tried) + ".\nFix one of:\n"
        "  1. pass --data-dir DIR (or set CDCA_DATA=DIR) to a folder with "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz\n"
        "  2. install the Debian package: sudo apt-get install dataset-fashion-mnist "
        f"(puts them in {DEBIAN_DIR})\n  " + download
    )
