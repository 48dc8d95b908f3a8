"""An upper reference for U-VPA, not a method: the cloud's target for each upload is its true label.

Gan et al., "Cloud-Device Collaborative Adaptation to Continual Changing Environments in
the Real-world" (U-VPA), CVPR 2023 (https://arxiv.org/abs/2212.00972), assume a cloud
teacher much stronger than the device. This row asks what the same device, uploads, prompt
and fit would reach with a perfect teacher: the session's "teacher" answers each uploaded
frame with a confident one-hot logit for its label. Everything else is ``uvpa``'s (the
target is the teacher alone, so the device's own view never dilutes the labels).

The benchmark reveals a batch's labels right before the method steps on it. They cannot
reach that batch's prediction: the device predicts before it uploads, and a prompt learned
from batch t reaches the device at batch t + delay (delay >= 1).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from cloud.students.preprocess import pixels_to_uint8
from protocol.errors import DataError
from simulations.cloud_device import CloudDeviceWorld, UVPAConfig, UVPAMethod

# softmax of a one-hot logit of 8 over 10 classes puts 99.7 % on the label: a hard target
# that keeps the KL finite
LABEL_LOGIT = 8.0


class LabelTargetMethod(UVPAMethod):
    """U-VPA whose cloud learns from the uploads' true labels (call ``reveal_labels`` first)."""

    def __init__(self, name: str, world: CloudDeviceWorld, config: UVPAConfig) -> None:
        self._labels_by_frame: dict[bytes, int] = {}
        super().__init__(name, replace(world, teacher=self._label_logits), config)

    def reveal_labels(self, pixels: torch.Tensor, labels: np.ndarray) -> None:
        """The labels of the batch about to be stepped on, keyed by each frame's bytes."""
        self._labels_by_frame = {
            frame.tobytes(): int(label)
            for frame, label in zip(pixels_to_uint8(pixels).numpy(), labels, strict=True)
        }

    def _label_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(pixels), len(self.world.class_vectors))
        for i, frame in enumerate(pixels_to_uint8(pixels).numpy()):
            label = self._labels_by_frame.get(frame.tobytes())
            if label is None:
                raise DataError(f"{self.name} got an upload whose label was not revealed; "
                                "call reveal_labels(pixels, labels) before step(pixels)")  # fmt: skip
            logits[i, label] = LABEL_LOGIT
        return logits
