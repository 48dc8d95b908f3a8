"""CEMA's edge filter: upload only reliable (low-entropy) frames that are not redundant.

From ``codebase/core/tta/cema.py`` (``EntropyCriterion``, ``SimilarityCriterion``): a frame is
reliable when its entropy is below 0.4 ln C (the released config's static threshold: no
warm-up, no lower margin); it is redundant when the cosine similarity of its prediction to
an EMA (0.9) of the kept predictions is at least ``cosine_margin``. CEMA's ImageNet value
0.05 would drop nearly every frame with 10 classes (a confident prediction is already ~0.3
from the uniform one), so the margin follows EATA's CIFAR-10 setting, 0.4, which CEMA's
filter comes from. ``budget`` caps the uploads at a share of all frames, as cdca's budget
does, taking a uniform draw of the frames that passed (CEMA ranks none of them); None
uploads every frame that passes (CEMA's own rate). NumPy only, like the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from device.sampling import UncertaintySampler, UploadDecision
from device.uncertainty import entropy, softmax
from protocol.config.adaptation import DeviceSettings


class CemaSampler(UncertaintySampler):
    """Drop-in for the device's sampler: same decision, CEMA's rule for which frames go up."""

    def __init__(
        self,
        config: DeviceSettings | None = None,
        signature_channels: int = 32,
        seed: int = 0,
        budget: float | None = None,
        entropy_margin: float = 0.4,
        cosine_margin: float = 0.4,
    ) -> None:
        super().__init__(config, signature_channels, seed)
        self.cap, self.entropy_margin, self.cosine_margin = budget, entropy_margin, cosine_margin
        self.mean_probs: np.ndarray | None = None
        self.rng = np.random.default_rng([seed, 2])
        self.seen = self.selected = 0
        self.passed = 0  # frames that passed both filters (CEMA's own upload count)

    def decide(
        self,
        logits: np.ndarray,
        batch_stats: np.ndarray | None,
        view_logits: Sequence[np.ndarray] = (),
    ) -> UploadDecision:
        """Reliable, non-redundant frames, capped by the budget when there is one."""
        uncertainty = entropy(logits)  # nats / ln C
        shift = self.detect_shift(batch_stats)
        reliable = np.flatnonzero(uncertainty < self.entropy_margin)
        passed = reliable[self._not_redundant(softmax(logits[reliable].astype(np.float64)))]
        self.seen += len(logits)
        self.passed += len(passed)
        chosen = passed
        if self.cap is not None:
            allowance = max(0, int(np.floor(self.cap * self.seen)) - self.selected)
            if len(passed) > allowance:
                chosen = np.sort(self.rng.choice(passed, size=allowance, replace=False))
        self.selected += len(chosen)
        chosen = chosen.astype(np.int64)
        return UploadDecision(chosen, uncertainty[chosen], shift)

    def _not_redundant(self, probs: np.ndarray) -> np.ndarray:
        """Mask of the rows far enough from the running mean prediction; updates the mean."""
        if len(probs) == 0:
            return np.zeros(0, dtype=bool)
        if self.mean_probs is None:
            keep = np.ones(len(probs), dtype=bool)
        else:
            norms = np.linalg.norm(probs, axis=1) * np.linalg.norm(self.mean_probs)
            cosine = probs @ self.mean_probs / np.maximum(norms, 1e-12)
            keep = np.abs(cosine) < self.cosine_margin
        if keep.any():
            new = probs[keep].mean(0)
            self.mean_probs = new if self.mean_probs is None else 0.9 * self.mean_probs + 0.1 * new
        return keep

    @property
    def uploaded_fraction(self) -> float:
        """Frames uploaded so far / frames seen."""
        return self.selected / self.seen if self.seen else 0.0
