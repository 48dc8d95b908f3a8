"""Clean labelled image sets: Fashion-MNIST, an ``.npz`` file or a folder of class folders.

A source spec is ``fashion-mnist``, ``npz:FILE`` or ``image-folder:DIR``
(``protocol.config.data.DataConfig`` documents them for users). Every loader returns
(N, size, size, 3) uint8 RGB under the project's resize policy, labels in [0, classes),
and the class names reconciled with the project's ``class_names``: a list that does not
fit the data is an error that says how, never a silent relabelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cloud.data.class_names import describe_classes
from cloud.data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from cloud.data.fashion_mnist import load_fashion_mnist
from cloud.data.images import IMAGE_SUFFIXES, fit_image, fit_images, list_images, open_rgb
from cloud.data.labelled import LabelledImages
from protocol.config.data import SOURCE_KINDS
from protocol.errors import DataError, unknown_name


def load_source(
    spec: str, *, split: str = "test", data_dir: str | Path | None = None,
    image_size: int = 32, resize: str = "pad", class_names: Sequence[str] = (),
) -> LabelledImages:
    """The images of a source spec at ``image_size`` (see the module docstring).

    Args:
        spec: ``fashion-mnist``, ``npz:FILE`` or ``image-folder:DIR``.
        split: for ``fashion-mnist``: ``train`` or ``test``.
        data_dir: where to look for Fashion-MNIST first.
        image_size: square size of every returned image.
        resize: ``pad``, ``crop``, ``stretch`` or ``none`` (``cloud.data.images``).
        class_names: the project's names, in label order; empty: the data's own.
    """
    kind, _, path = spec.partition(":")
    if kind == "fashion-mnist":
        raw = load_fashion_mnist(split, data_dir, padded=False)
        names = _reconcile(FASHION_MNIST_CLASSES, class_names, "fashion-mnist")
        images = fit_images(raw.images, image_size, resize, raw.name)
        return LabelledImages(images, raw.labels, names, raw.name)
    if kind == "npz":
        return load_npz(Path(path), image_size, resize, class_names)
    if kind == "image-folder":
        return load_image_folder(Path(path), image_size, resize, class_names)
    raise unknown_name("data source", kind, SOURCE_KINDS)


def load_npz(
    path: Path, image_size: int, resize: str = "pad", class_names: Sequence[str] = ()
) -> LabelledImages:
    """An ``.npz`` with ``images`` (N, H, W[, 1 or 3]) uint8, ``labels`` (N,) and optional ``class_names``."""
    data = read_npz(path, class_names)
    fitted = fit_images(data.images, image_size, resize, str(path))
    return LabelledImages(fitted, data.labels, data.class_names, name=data.name)


def read_npz(path: Path, class_names: Sequence[str] = ()) -> LabelledImages:
    """An ``.npz`` source as it is stored (RGB, its own size), every key and label checked."""
    arrays = _read_npz(path)
    images = _rgb(arrays["images"], path)
    labels = arrays["labels"]
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be ({len(images)},) integers, got "
                        f"{labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: labels must start at 0, found {labels.min()}")
    own = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else None
    count = int(labels.max()) + 1 if len(labels) else 0
    if own is not None and count > len(own):
        raise DataError(f"{path}: labels go up to {count - 1} but class_names has {len(own)} "
                        "names; a label must index a name")
    default = own or tuple(f"class_{i}" for i in range(count))
    names = _reconcile(default, class_names, str(path), fixed_count=own is not None)
    if count > len(names):
        raise DataError(f"{path}: labels go up to {count - 1} but data.class_names has "
                        f"{len(names)} names; give one name per class")
    return LabelledImages(images, labels, names, name=path.stem)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npz file (no pickled objects): {err}") from err
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise DataError(f"{path} lacks the array(s) {sorted(missing)}; it has {sorted(arrays)}. "
                        "An npz source holds images (N, H, W[, 3]) uint8 and labels (N,)")
    return arrays


def _rgb(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8 (0-255), got {images.dtype}; convert "
                        "them, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:  # greyscale
        return np.repeat(images[..., np.newaxis], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), "
                        f"got {images.shape}")
    return images


def load_image_folder(
    root: Path, image_size: int, resize: str = "crop", class_names: Sequence[str] = ()
) -> LabelledImages:
    """``root/<class name>/<image files>``; classes in ``class_names`` order, else alphabetical."""
    folders = class_folders(root, class_names)
    images, labels = [], []
    sizes: dict[tuple[int, int], Path] = {}
    for label, (_, files) in enumerate(folders):
        for path in files:
            image = open_rgb(path)
            sizes.setdefault(image.size, path)
            if resize == "none" and len(sizes) > 1:
                raise DataError(_mixed_sizes(sizes))
            images.append(fit_image(image, image_size, resize, str(path)))
            labels.append(label)
    classes = tuple(name for name, _ in folders)
    return LabelledImages(np.stack(images), np.array(labels, dtype=np.int64), classes, root.name)


def class_folders(root: Path, class_names: Sequence[str] = ()) -> list[tuple[str, list[Path]]]:
    """The class folders of an image folder in label order, each with its image files.

    Raises:
        DataError: no such folder, no class sub-folders, a folder without images, or
            ``class_names`` that do not name every folder once.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    found = []
    for name in _folder_order(root, folders, class_names):
        files = list_images(root / name)
        if not files:
            kinds = ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES))
            raise DataError(f"class folder {root / name} holds no images ({kinds}); add some "
                            "or remove the folder")
        found.append((name, files))
    return found


def _mixed_sizes(sizes: dict[tuple[int, int], Path]) -> str:
    seen = "; ".join(f"{w}x{h} px ({path})" for (w, h), path in sizes.items())
    return (f"the images differ in size ({seen}) and data.resize is none; set data.resize to "
            "pad, crop or stretch to bring them to data.image_size")


def _folder_order(root: Path, folders: list[str], class_names: Sequence[str]) -> tuple[str, ...]:
    if not class_names:
        return tuple(folders)
    missing = [n for n in class_names if n not in folders]
    extra = [f for f in folders if f not in class_names]
    if missing or extra:
        problems = [f"no folder for {missing}"] if missing else []
        problems += [f"no name for the folder(s) {extra}"] if extra else []
        raise DataError(
            f"data.class_names does not match the class folders of {root}: "
            f"{'; '.join(problems)}. Name every folder once (the list sets the label order)"
        )
    return tuple(class_names)


def _reconcile(
    own: Sequence[str], wanted: Sequence[str], source: str, fixed_count: bool = True
) -> tuple[str, ...]:
    """The data's class names, or the project's when given (same count where the data fixes one)."""
    if not wanted:
        return tuple(own)
    if fixed_count and len(wanted) != len(own):
        raise DataError(f"data.class_names has {len(wanted)} names but {source} has "
                        f"{describe_classes(own)}")
    return tuple(wanted)
