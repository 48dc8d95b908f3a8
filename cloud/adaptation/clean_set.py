"""The cloud's clean labelled set, which synthetic environment samples are rendered from.

Synthetic samples (``cloud.adaptation.synthetic``) need labelled clean images over the
device's own classes. Here that is Fashion-MNIST's training split, found offline (the
Debian package, ``CDCA_DATA``); the corrupted streams devices see are made from its test
split, so no image a device is scored on is ever rendered. A student over other classes
has no clean set here, and asking for synthetic samples for it is an error that says so.
"""

from __future__ import annotations

from cloud.adaptation.synthetic import EnvironmentRenderer, SyntheticConfig
from cloud.data.labelled import LabelledImages
from protocol.errors import ConfigError, DataError

CLEAN_SET_MISSING = (
    "install the Fashion-MNIST training split (`make setup`, the Debian package "
    "dataset-fashion-mnist) or point CDCA_DATA at its IDX files"
)
NO_SYNTHETIC = "run without synthetic samples (`--synthetic 0`, or `synthetic = 0` in the settings)"


def load_clean_set(class_names: tuple[str, ...]) -> LabelledImages | None:
    """The Fashion-MNIST training split, when installed and ``class_names`` are its classes."""
    from cloud.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    if tuple(class_names) != CLASS_NAMES:
        return None
    try:
        return load_fashion_mnist("train", allow_download=False)
    except DataError:
        return None


def clean_renderer(class_names: tuple[str, ...], count: int) -> EnvironmentRenderer:
    """A renderer of ``count`` synthetic samples per update over the clean set of these classes.

    Raises:
        ConfigError: no clean set for these classes, with what to install or change.
    """
    from cloud.data.fashion_mnist import CLASS_NAMES

    if tuple(class_names) != CLASS_NAMES:
        raise ConfigError(
            "synthetic samples need the cloud's clean labelled images of the device's classes, "
            f"and only Fashion-MNIST's are known here (the student has {len(class_names)} "
            f"classes: {', '.join(class_names[:4])}...); {NO_SYNTHETIC}"
        )
    clean = load_clean_set(class_names)
    if clean is None:
        raise ConfigError(
            f"synthetic samples render the cloud's clean training set; {CLEAN_SET_MISSING}, "
            f"or {NO_SYNTHETIC}"
        )
    return EnvironmentRenderer(clean, len(class_names), SyntheticConfig(count=count))
