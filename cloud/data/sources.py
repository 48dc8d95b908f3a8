"""Clean labelled image sets that ``cdca data prepare`` can turn into a corrupted benchmark.

A source spec is ``fashion-mnist``, ``npz:PATH`` (arrays ``images``, ``labels`` and
optionally ``class_names``) or ``image-folder:PATH`` (one sub-folder per class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.data.fashion_mnist import load_fashion_mnist
from cloud.data.images import list_images, read_image
from cloud.data.labelled import LabelledImages
from protocol.errors import DataError, unknown_name

SOURCE_KINDS = ("fashion-mnist", "npz", "image-folder")


def load_source(
    spec: str, *, data_dir: str | Path | None = None, image_size: int = 32
) -> LabelledImages:
    """Load the clean test images of a source spec (see module docstring).

    Args:
        spec: ``fashion-mnist``, ``npz:PATH`` or ``image-folder:PATH``.
        data_dir: where to look for Fashion-MNIST first.
        image_size: square size for image folders (npz images keep their size).
    """
    kind, _, path = spec.partition(":")
    if kind == "fashion-mnist":
        return load_fashion_mnist("test", data_dir)
    if kind == "npz":
        return load_npz(Path(path))
    if kind == "image-folder":
        return load_image_folder(Path(path), image_size)
    raise unknown_name("data source", kind, SOURCE_KINDS)


def load_npz(path: Path) -> LabelledImages:
    """An ``.npz`` with ``images`` (N, H, W[, 3]) uint8, ``labels`` (N,) and ``class_names``."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npz file: {err}") from err
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise DataError(f"{path} lacks the array(s) {sorted(missing)}; it has {sorted(arrays)}")
    images = arrays["images"]
    if images.ndim == 3:  # greyscale
        images = np.repeat(images[..., np.newaxis], 3, axis=-1)
    labels = arrays["labels"].astype(np.int64)
    names = (
        tuple(str(n) for n in arrays["class_names"])
        if "class_names" in arrays
        else tuple(f"class_{i}" for i in range(int(labels.max()) + 1 if len(labels) else 0))
    )
    return LabelledImages(images, labels, names, name=path.stem)


def load_image_folder(root: Path, image_size: int) -> LabelledImages:
    """``root/<class name>/<image files>``; classes sorted by folder name."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in list_images(root / name):
            images.append(read_image(path, image_size))
            labels.append(label)
    if not images:
        raise DataError(f"{root} has class folders but no images in them")
    return LabelledImages(
        np.stack(images), np.array(labels, dtype=np.int64), tuple(classes), name=root.name
    )
