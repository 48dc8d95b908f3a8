"""When the device computes batch statistics, and what it holds between; NumPy only, no torch.

With ``[adaptation.device] stats_every`` k > 1 the device runs its statistics graph on
every k-th batch and on any batch whose input statistics jump (per-channel mean and log
standard deviation of the preprocessed pixels, watched by the same outlier test as the
shift detector: cheap, and most corruptions move them), and whenever a prompt with
another BatchNorm scale/shift arrives (each layer's statistics depend on the layers before
it, so statistics computed under the old prompt no longer fit the new one), and holds the
statistics it saw. The batches between run the held-statistics graph (``device.held_stats``) with them.
Two sets are held: the prompted run's and the no-prompt fallback's (the prompt gate's
other run), each with a session for the adaptation it was opened with.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from device.held_stats import HeldStatisticsModel
from device.shift import ShiftDetector
from protocol.signature import batch_signature

PROMPTED, FALLBACK = "prompted", "fallback"


def input_signature(x: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) preprocessed input -> per-channel mean and log standard deviation."""
    stats = np.stack([x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))])
    return batch_signature(stats, x.shape[1])


class HeldStatistics:
    """The statistics and sessions a device holds between the batches that compute them.

    Args:
        model: the model folder's held-statistics graph.
        every: compute statistics at least every ``every`` batches.
        sensitivity: the input watch's outlier factor (the device's ``shift_sensitivity``).
    """

    def __init__(self, model: HeldStatisticsModel, every: int, sensitivity: float) -> None:
        self.model, self.every = model, every
        self.watch = ShiftDetector(sensitivity)
        self.stats: dict[str, np.ndarray] = {}
        self.computed_under = b""  # the norm_affine the prompted statistics were computed with
        self._sessions: dict[str, tuple[bytes, ort.InferenceSession]] = {}
        self.since_refresh = 0

    def due(self, x: np.ndarray, needs_fallback: bool, norm_affine: np.ndarray) -> bool:
        """Whether this batch computes statistics (the watch sees every batch)."""
        jumped = self.watch.update(input_signature(x))
        missing = PROMPTED not in self.stats or (needs_fallback and FALLBACK not in self.stats)
        new_prompt = norm_affine.tobytes() != self.computed_under
        return jumped or missing or new_prompt or self.since_refresh >= self.every

    def refreshed(
        self, prompted: np.ndarray, fallback: np.ndarray | None, norm_affine: np.ndarray
    ) -> None:
        """Hold the statistics a batch computed under ``norm_affine``.

        Without a fallback run the old fallback statistics are dropped.
        """
        self.stats = {PROMPTED: prompted.copy()}
        self.computed_under = norm_affine.tobytes()
        if fallback is not None:
            self.stats[FALLBACK] = fallback.copy()
        self._sessions.clear()
        self.since_refresh = 1

    def forget(self) -> None:
        """Hold nothing: the next batch that could run on held statistics computes them."""
        self.stats.clear()
        self._sessions.clear()

    def passed(self) -> None:
        """A batch ran on the held statistics."""
        self.since_refresh += 1

    def session(self, variant: str, norm_affine: np.ndarray) -> ort.InferenceSession:
        """The held graph for ``variant``'s statistics and this ``norm_affine`` (reopened on change)."""
        key = norm_affine.tobytes()
        cached = self._sessions.get(variant)
        if cached is not None and cached[0] == key:
            return cached[1]
        session = self.model.session(norm_affine, self.stats[variant])
        self._sessions[variant] = (key, session)
        return session
