"""On-device shift detection: tells the cloud "new environment" when batch statistics jump.

Watches the distance between each batch's mean embedding and the current environment's
reference, relative to the jitter seen inside that environment, plus the jump in mean
entropy. A shift is declared after ``patience`` consecutive outlying batches; the reference
then restarts from the new batches. NumPy only; must not import torch.
"""

from __future__ import annotations

import numpy as np

from protocol.errors import ConfigError


class ShiftDetector:
    """Page-Hinkley-style detector on (embedding drift, entropy jump) per batch.

    Args:
        sensitivity: how many times the usual within-environment drift counts as a shift.
        min_distance: cosine distance below which nothing counts as a shift.
        patience: consecutive outlying batches needed.
        momentum: EMA momentum of the reference statistics.
    """

    def __init__(
        self,
        sensitivity: float = 4.0,
        min_distance: float = 0.02,
        patience: int = 2,
        momentum: float = 0.9,
    ) -> None:
        if sensitivity <= 0 or patience < 1 or not 0 <= momentum < 1:
            raise ConfigError(
                "ShiftDetector needs sensitivity > 0, patience >= 1, 0 <= momentum < 1"
            )
        self.sensitivity, self.min_distance = sensitivity, min_distance
        self.patience, self.momentum = patience, momentum
        self.reference: np.ndarray | None = None
        self.reference_entropy = 0.0
        self.jitter = 0.0
        self.outliers = 0
        self.batches_in_environment = 0

    def update(self, embedding: np.ndarray, entropy: np.ndarray) -> bool:
        """Feed one batch's (N, D) embeddings and (N,) entropies; True when a shift is declared."""
        mean = embedding.mean(axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        batch_entropy = float(entropy.mean())
        if self.reference is None:
            self._restart(mean, batch_entropy)
            return False
        distance = 1.0 - float(mean @ self.reference)
        score = distance + abs(batch_entropy - self.reference_entropy)
        limit = max(self.min_distance, self.sensitivity * self.jitter)
        if self.batches_in_environment >= 2 and score > limit:
            self.outliers += 1
            if self.outliers >= self.patience:
                self._restart(mean, batch_entropy)
                return True
            return False
        self.outliers = 0
        self._absorb(mean, batch_entropy, score)
        return False

    def _restart(self, mean: np.ndarray, batch_entropy: float) -> None:
        self.reference, self.reference_entropy = mean, batch_entropy
        self.jitter, self.outliers, self.batches_in_environment = 0.0, 0, 1

    def _absorb(self, mean: np.ndarray, batch_entropy: float, score: float) -> None:
        assert self.reference is not None
        m = self.momentum
        reference = m * self.reference + (1 - m) * mean
        self.reference = reference / max(float(np.linalg.norm(reference)), 1e-12)
        self.reference_entropy = m * self.reference_entropy + (1 - m) * batch_entropy
        self.jitter = (
            score if self.batches_in_environment == 1 else m * self.jitter + (1 - m) * score
        )
        self.batches_in_environment += 1
