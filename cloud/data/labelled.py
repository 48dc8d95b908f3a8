"""``LabelledImages``: the one in-memory shape of a labelled image set across cdca."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocol.errors import DataError


@dataclass(frozen=True)
class LabelledImages:
    """A labelled image set.

    Attributes:
        images: (N, H, W, 3) uint8, RGB.
        labels: (N,) int64 in [0, len(class_names)).
        class_names: one name per class, index = label.
        name: a short human-readable name for logs and reports.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(
                f"{self.name or 'images'}: need (N, H, W, 3) uint8, got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"{self.name or 'labels'}: {len(self.images)} images but labels of shape "
                f"{self.labels.shape}"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(
                f"{self.name or 'labels'}: labels must lie in [0, {len(self.class_names)}), "
                f"found {self.labels.min()}..{self.labels.max()}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, count: int | None = None, offset: int = 0) -> LabelledImages:
        """The images ``offset .. offset + count`` (all from ``offset`` when ``count`` is None)."""
        end = None if count is None else offset + count
        return LabelledImages(
            self.images[offset:end], self.labels[offset:end], self.class_names, self.name
        )
