"""The device half of U-VPA: score each frame's uncertainty, pick the uploads (UGS), flag shifts.

Gan et al., U-VPA, CVPR 2023 (https://arxiv.org/abs/2212.00972), Uncertainty Guided
Sampling. Works on what the ONNX model returns (logits and batch statistics), in NumPy only; it
must not import torch. ``score="random"`` is the ablation that spends the same budget on
uniformly random frames; ``score="disagreement"`` ranks frames by how much the model's
answer moves under a mirror and a little noise (two extra forward passes per batch, which
the caller makes and hands in as ``view_logits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from device.selection import BudgetSelector
from device.shift import ShiftDetector, batch_signature
from device.uncertainty import disagreement, entropy, margin
from protocol.errors import ConfigError

SCORES = ("entropy", "margin", "disagreement", "random")


@dataclass(frozen=True)
class SamplingConfig:
    """What the device uploads.

    Attributes:
        budget: at most this fraction of frames is uploaded.
        score: how uncertainty is measured (or ``random``: no uncertainty at all).
        random_fraction: share of the budget spent on random frames even when scoring, so
            the cloud also sees typical frames of the environment.
        class_balance: spread the uncertain picks over the device's predicted classes.
        detect_shifts: run the shift detector and report new environments.
        seed: for the random picks.
    """

    budget: float = 0.1
    score: str = "entropy"
    random_fraction: float = 0.5
    class_balance: bool = True
    detect_shifts: bool = True
    seed: int = 0
    noise_std: float = 0.02  # of the noisy view for ``disagreement``, as a share of 255

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"unknown uncertainty score {self.score!r}; choose from {SCORES}")


@dataclass(frozen=True)
class UploadDecision:
    """One batch's verdict: which frames go up, their scores, and whether the world changed."""

    indices: np.ndarray  # (n,) int64, sorted
    scores: np.ndarray  # (n,) float32 uncertainty of those frames, in [0, 1]
    shift: bool


class UncertaintySampler:
    """Stateful over the stream: the budget and the shift detector remember what came before.

    Args:
        config: budget, score and shift detection.
        signature_channels: channels of the model's first normalisation layer (the manifest's
            first ``norm_layers`` entry); the shift detector watches their batch statistics.
    """

    def __init__(self, config: SamplingConfig | None = None, signature_channels: int = 32) -> None:
        self.config = config or SamplingConfig()
        self.signature_channels = signature_channels
        cfg = self.config
        self.random_scores = np.random.default_rng([cfg.seed, 1])
        self.selector = BudgetSelector(
            budget=cfg.budget,
            random_fraction=1.0 if cfg.score == "random" else cfg.random_fraction,
            class_balance=cfg.class_balance and cfg.score != "random",
            seed=cfg.seed,
        )
        self.detector = ShiftDetector() if cfg.detect_shifts else None

    @property
    def needs_views(self) -> bool:
        """Whether ``decide`` needs the logits of perturbed views (see ``perturbed_views``)."""
        return self.config.score == "disagreement"

    def decide(
        self,
        logits: np.ndarray,
        batch_stats: np.ndarray,
        view_logits: Sequence[np.ndarray] = (),
    ) -> UploadDecision:
        """Score the (N, C) logits, choose uploads within budget, check (2, K) stats for a shift.

        ``view_logits``: the same frames under ``perturbed_views``, for ``disagreement``.
        The scores sent with the uploads are always the entropy, in [0, 1].
        """
        if self.needs_views and not view_logits:
            raise ConfigError("disagreement scoring needs the logits of the perturbed views")
        uncertainty = entropy(logits)
        shift = False
        if self.detector is not None:
            shift = self.detector.update(batch_signature(batch_stats, self.signature_channels))
        scores = self._scores(logits, uncertainty, view_logits)
        chosen = self.selector.select(scores, logits.argmax(axis=1))
        return UploadDecision(chosen, uncertainty[chosen], shift)

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
