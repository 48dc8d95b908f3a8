"""On-device shift detection: tells the cloud "new environment" when the input statistics jump.

The signature of a batch is what the model's first normalisation layer saw: per-channel
mean and log standard deviation of its input (part of the ``batch_stats`` output, so it
costs nothing extra). Deeper signals fail here: with batch statistics in every layer the
embeddings of different corruptions look alike, while the first layer still sees the
corruption. On the 15-corruption Fashion-MNIST-C stream (1,000 images per corruption) the
benchmark's U-VPA row reports 15 shifts for its 14 changes (``shifts_reported`` in
``results.json``); a development check at 300 images per corruption matched 13 of the 14
changes with no false alarm (Gaussian to shot noise barely changes the input).
A shift is declared when a batch lies further from the current environment's mean signature
than ``sensitivity`` times the usual within-environment distance. NumPy only; must not
import torch.
"""

from __future__ import annotations

import numpy as np

from protocol.errors import ConfigError
from protocol.signature import batch_signature, signature_distance

__all__ = ["ShiftDetector", "batch_signature"]


class ShiftDetector:
    """Running mean of the environment's signatures, and an outlier test against it.

    Args:
        sensitivity: how many times the usual within-environment distance counts as a shift.
        min_distance: RMS distance below which nothing counts as a shift.
        patience: consecutive outlying batches needed (1: declare at the first one).
        warmup: batches of a new environment before it can be left again.
    """

    def __init__(
        self,
        sensitivity: float = 1.8,
        min_distance: float = 0.05,
        patience: int = 1,
        warmup: int = 2,
    ) -> None:
        if sensitivity <= 0 or patience < 1 or warmup < 2 or min_distance < 0:
            raise ConfigError(
                "ShiftDetector needs sensitivity > 0, min_distance >= 0, patience >= 1, warmup >= 2"
            )
        self.sensitivity, self.min_distance = sensitivity, min_distance
        self.patience, self.warmup = patience, warmup
        self.reference: np.ndarray | None = None
        self.jitter = 0.0
        self.batches_in_environment = 0
        self.outliers = 0

    def update(self, signature: np.ndarray) -> bool:
        """Feed one batch's signature; True when a new environment is declared."""
        signature = np.asarray(signature, dtype=np.float64).ravel()
        if self.reference is None or self.reference.shape != signature.shape:
            self._restart(signature)
            return False
        distance = signature_distance(signature, self.reference)
        limit = max(self.min_distance, self.sensitivity * self.jitter)
        if self.batches_in_environment >= self.warmup and distance > limit:
            self.outliers += 1
            if self.outliers >= self.patience:
                self._restart(signature)
                return True
            return False
        self.outliers = 0
        self._absorb(signature, distance)
        return False

    def _restart(self, signature: np.ndarray) -> None:
        self.reference, self.jitter = signature.copy(), 0.0
        self.batches_in_environment, self.outliers = 1, 0

    def _absorb(self, signature: np.ndarray, distance: float) -> None:
        assert self.reference is not None
        n = self.batches_in_environment
        self.jitter = distance if n == 1 else self.jitter + (distance - self.jitter) / n
        self.reference = self.reference + (signature - self.reference) / (n + 1)
        self.batches_in_environment += 1
