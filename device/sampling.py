"""The device half of U-VPA: score each frame's uncertainty, pick the uploads (UGS), flag shifts.

Gan et al., U-VPA, CVPR 2023 (https://arxiv.org/abs/2212.00972), Uncertainty Guided
Sampling. Works on what the ONNX model returns (logits and batch statistics), in NumPy only; it
must not import torch. ``score="random"`` is the ablation that spends the same budget on
uniformly random frames; ``score="disagreement"`` ranks frames by how much the model's
answer moves under a mirror and a little noise (two extra forward passes per batch, which
the caller makes and hands in as ``view_logits``).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from device.selection import BudgetSelector
from device.shift import ShiftDetector, batch_signature
from device.uncertainty import disagreement, entropy, margin
from protocol.config.adaptation import DeviceSettings, Score
from protocol.errors import ConfigError

SCORES = typing.get_args(Score)


@dataclass(frozen=True)
class UploadDecision:
    """One batch's verdict: which frames go up, their scores, and whether the world changed."""

    indices: np.ndarray  # (n,) int64, sorted
    scores: np.ndarray  # (n,) float32 uncertainty of those frames, in [0, 1]
    shift: bool


class UncertaintySampler:
    """Stateful over the stream: the budget and the shift detector remember what came before.

    Args:
        config: the project's ``[adaptation.device]`` settings (budget, score, shifts).
        signature_channels: channels of the model's first normalisation layer (the manifest's
            first ``norm_layers`` entry); the shift detector watches their batch statistics.
        seed: this device's own seed for its random picks (devices should differ).
    """

    def __init__(
        self, config: DeviceSettings | None = None, signature_channels: int = 32, seed: int = 0
    ) -> None:
        self.config = config or DeviceSettings()
        self.signature_channels = signature_channels
        self.random_scores = np.random.default_rng([seed, 1])
        self.selector = BudgetSelector(seed=seed)
        self.detector: ShiftDetector | None = None
        self.reconfigure(self.config)

    def reconfigure(self, config: DeviceSettings) -> None:
        """Switch to new settings mid-stream; the budget's count and the shift detector carry on."""
        self.config = config
        self.selector.budget = config.budget
        self.selector.random_fraction = 1.0 if config.score == "random" else config.random_fraction
        self.selector.class_balance = config.class_balance and config.score != "random"
        if not config.detect_shifts:
            self.detector = None
        elif self.detector is None:
            self.detector = ShiftDetector(sensitivity=config.shift_sensitivity)
        else:
            self.detector.sensitivity = config.shift_sensitivity

    @property
    def needs_views(self) -> bool:
        """Whether ``decide`` needs the logits of perturbed views (see ``perturbed_views``)."""
        return self.config.score == "disagreement"

    def decide(
        self,
        logits: np.ndarray,
        batch_stats: np.ndarray | None,
        view_logits: Sequence[np.ndarray] = (),
    ) -> UploadDecision:
        """Score the (N, C) logits, choose uploads within budget, check (2, K) stats for a shift.

        ``batch_stats`` None: the batch ran on held statistics, so there are no fresh ones
        to check (the device computes them whenever its input's statistics jump).
        ``view_logits``: the same frames under ``perturbed_views``, for ``disagreement``.
        The scores sent with the uploads are always the entropy, in [0, 1].
        """
        if self.needs_views and not view_logits:
            raise ConfigError("disagreement scoring needs the logits of the perturbed views")
        uncertainty = entropy(logits)
        shift = self.detect_shift(batch_stats)
        scores = self._scores(logits, uncertainty, view_logits)
        chosen = self.selector.select(scores, logits.argmax(axis=1))
        return UploadDecision(chosen, uncertainty[chosen], shift)

    def detect_shift(self, batch_stats: np.ndarray | None) -> bool:
        """Whether this batch's (2, K) statistics mark a new environment (False when off)."""
        if self.detector is None or batch_stats is None:
            return False
        return self.detector.update(batch_signature(batch_stats, self.signature_channels))

    @property
    def uploaded_fraction(self) -> float:
        """Frames uploaded so far / frames seen."""
        return self.selector.uploaded_fraction

    def _scores(
        self, logits: np.ndarray, uncertainty: np.ndarray, view_logits: Sequence[np.ndarray]
    ) -> np.ndarray:
        if self.config.score == "margin":
            return margin(logits)
        if self.config.score == "disagreement":
            return disagreement([logits, *view_logits])
        if self.config.score == "random":
            return self.random_scores.random(len(logits)).astype(np.float32)
        return uncertainty
