"""``[data]``: the labelled images a project learns from and the shifted images it is tested on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from protocol.config.loader import SPEC, check_choices
from protocol.errors import ConfigError

Resize = Literal["pad", "crop", "stretch", "none"]
SOURCE_KINDS = ("fashion-mnist", "npz", "image-folder")


@dataclass(frozen=True)
class DataConfig:
    """[data]: the project's images (docs/your-own-data.md shows every kind).

    Attributes:
        train: clean labelled training images: ``fashion-mnist`` (its 60,000 training
            images), ``npz:FILE`` (arrays ``images`` (N, H, W[, 3]) uint8, ``labels`` (N,)
            integers from 0, optional ``class_names``) or ``image-folder:DIR`` (one sub-folder
            of images per class). Every model trains on these, and the cloud's synthetic
            samples are rendered from them.
        test: clean labelled test images, same kinds (``fashion-mnist``: its 10,000 test
            images); empty: hold ``test_share`` of ``train`` out. ``cdca data prepare``
            corrupts these into ``shifted``; no model ever trains on them.
        test_share: share of each class of ``train`` held out as the test images when
            ``test`` is empty.
        shifted: the corrupted benchmark the devices are tested on: a folder ``cdca data
            prepare`` writes (the CIFAR-10-C layout), or ``cifar10-c:DIR``, ``cifar100-c:DIR``,
            ``imagenet-c:DIR``.
        image_size: side of the square images every model takes, in pixels.
        resize: how an image of another size becomes ``image_size`` square: ``pad`` centres
            it on black (shrinking only one that is larger), ``crop`` resizes its short side
            and cuts the centre, ``stretch`` resizes both sides, ``none`` refuses it.
        class_names: one name per label, in label order; they become the teacher's
            captions, the device's output names and the reports' labels. Empty: from the
            data (the npz's ``class_names``, the image folders' names in alphabetical order,
            Fashion-MNIST's classes). For an image folder the list also decides which folder
            gets which label.
        data_dir: a folder with Fashion-MNIST's IDX files; empty: ``$CDCA_DATA``, then the
            Debian package ``dataset-fashion-mnist``.
        seed: seed of the held-out test split.
    """

    train: str = field(default="fashion-mnist", metadata={SPEC: True})
    test: str = field(default="fashion-mnist", metadata={SPEC: True})
    test_share: float = 0.2
    shifted: str = field(default="data/fashion-mnist-c", metadata={SPEC: True})
    image_size: int = 32
    resize: Resize = "pad"
    class_names: tuple[str, ...] = ()
    data_dir: str = field(default="", metadata={SPEC: True})
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("train", "test"):
            value = getattr(self, name)
            if value and value.partition(":")[0] not in SOURCE_KINDS:
                raise ConfigError(
                    f"{name} = {value!r}: a source is fashion-mnist, npz:FILE or image-folder:DIR"
                )
        if not self.train:
            raise ConfigError("train must name the training images (e.g. image-folder:images)")
        if not 0 < self.test_share < 1:
            raise ConfigError(f"test_share must be in (0, 1), got {self.test_share}")
        if not 8 <= self.image_size <= 1024:
            raise ConfigError(
                f"image_size must be between 8 and 1024 pixels, got {self.image_size}"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class_names repeat a name: {list(self.class_names)}")
