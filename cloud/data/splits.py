"""The project's clean training and test images (``[data]``): how every command loads them.

``data.train`` is what models learn from (and what the cloud renders synthetic samples
from); ``data.test`` is what ``cdca data prepare`` corrupts into the shifted benchmark and
what clean accuracy is measured on. With ``data.test`` empty, each class of the training
source is split (seeded) and the held-out part is the test set, so no image is ever in both.

Images of a user's source come back in a seeded random order: an image folder is read
class by class, and a stream (or ``--limit``) cut from a class-sorted set would show a
device one class at a time. Fashion-MNIST keeps its published order.
"""

from __future__ import annotations

import logging

import numpy as np

from cloud.data.labelled import LabelledImages
from cloud.data.sources import load_source
from protocol.config.data import DataConfig
from protocol.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "test")


def load_split(data: DataConfig, split: str, limit: int | None = None) -> LabelledImages:
    """The project's ``train`` or ``test`` images at ``data.image_size``; ``limit``: the first N.

    Raises:
        DataError: the source is missing, unreadable, or does not fit the class names.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be train or test, got {split!r}")
    if data.test:
        spec = data.train if split == "train" else data.test
        images = _load(data, spec, split)
    else:
        images = _held_out(data, _load(data, data.train, "train"), split)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        images = images.take(limit)
    return images


def _load(data: DataConfig, spec: str, split: str) -> LabelledImages:
    loaded = load_source(spec, split=split, data_dir=data.data_dir or None,
                         image_size=data.image_size, resize=data.resize,
                         class_names=data.class_names)
    if not len(loaded):
        raise DataError(f"{spec} holds no images")
    if spec == "fashion-mnist":
        return loaded
    order = np.random.default_rng([data.seed, SPLITS.index(split)]).permutation(len(loaded))
    return LabelledImages(loaded.images[order], loaded.labels[order], loaded.class_names,
                          loaded.name)


def _held_out(data: DataConfig, source: LabelledImages, split: str) -> LabelledImages:
    """Per class, ``test_share`` of the images (at least one when a class has two or more)."""
    rng = np.random.default_rng(data.seed)
    test: list[np.ndarray] = []
    for label in range(len(source.class_names)):
        members = rng.permutation(np.flatnonzero(source.labels == label))
        count = round(len(members) * data.test_share)
        test.append(members[: max(count, 1 if len(members) > 1 else 0)])
    held = np.zeros(len(source), dtype=bool)
    held[np.concatenate(test)] = True
    chosen = np.flatnonzero(held if split == "test" else ~held)  # in the source's shuffled order
    log.info("%s: %d of %d images held out as the test split", source.name, held.sum(), len(source))
    return LabelledImages(source.images[chosen], source.labels[chosen], source.class_names,
                          f"{source.name}-{split}")
