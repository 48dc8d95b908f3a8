"""The cloud's clean labelled images for synthetic samples: the project's own training split.

Synthetic samples (``cloud.adaptation.synthetic``) render clean labelled images of the
device's classes like each environment's uploads. They come from ``data.train``, the
images the teacher and student learned from; the shifted streams devices see are made from
``data.test``, so no image a device is scored on is ever rendered.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.data.class_names import describe_classes
from protocol.config.adaptation import SyntheticConfig
from protocol.config.data import DataConfig
from protocol.errors import ConfigError, DataError

NO_SYNTHETIC = (
    "or run without them (adaptation.synthetic.count = 0, `--set adaptation.synthetic.count=0`)"
)


def clean_renderer(
    data: DataConfig, class_names: Sequence[str], image_size: int, config: SyntheticConfig
) -> EnvironmentRenderer:
    """A renderer of ``config.count`` samples per update over the project's training images.

    Raises:
        ConfigError: the training images cannot be loaded, or are not the student's classes
            or size; the message says what to change.
    """
    from cloud.data.splits import load_split

    try:
        clean = load_split(data, "train")
    except DataError as err:
        raise ConfigError(
            f"synthetic samples render the project's training images, and "
            f"they cannot be loaded: {err}; fix data.train {NO_SYNTHETIC}"
        ) from err
    if tuple(clean.class_names) != tuple(class_names):
        raise ConfigError(
            f"synthetic samples need training images of the student's classes; data.train has "
            f"{describe_classes(clean.class_names)}, the student {describe_classes(class_names)}. "
            f"Point data.train at the student's data {NO_SYNTHETIC}"
        )
    if clean.images.shape[1] != image_size:
        raise ConfigError(
            f"data.image_size is {clean.images.shape[1]} but the student takes "
            f"{image_size}-px images; make them agree {NO_SYNTHETIC}"
        )
    return EnvironmentRenderer(clean, len(class_names), config)
