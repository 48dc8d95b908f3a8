"""Which frames to upload (UGS): top-k, a budget with a running quantile, class balance, some random.

Gan et al., U-VPA, CVPR 2023 (https://arxiv.org/abs/2212.00972) upload the most uncertain
samples. In this project's first prototype, uncertainty-only uploads biased the statistics
the cloud estimates (43.0 % against 52.1 % with random uploads), so a share of the budget can go to
uniformly random frames. NumPy only; must not import torch.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from protocol.errors import ConfigError


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first."""
    k = max(0, min(k, len(scores)))
    return np.argsort(-scores, kind="stable")[:k]


def class_balanced(scores: np.ndarray, predictions: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` indices, taking the most uncertain of each predicted class in turn."""
    per_class = {
        c: list(
            np.flatnonzero(predictions == c)[np.argsort(-scores[predictions == c], kind="stable")]
        )
        for c in np.unique(predictions)
    }
    chosen: list[int] = []
    while len(chosen) < k and any(per_class.values()):
        for queue in per_class.values():
            if queue and len(chosen) < k:
                chosen.append(int(queue.pop(0)))
    return np.array(chosen, dtype=np.int64)


class BudgetSelector:
    """Upload at most ``budget`` of all frames seen, preferring the most uncertain.

    A frame is a candidate when its score is above the running ``1 - budget`` quantile of the
    last ``window`` scores; the hard cap (selected <= budget * seen) always holds. A
    ``random_fraction`` of the allowance goes to frames drawn uniformly instead.

    Args:
        budget: fraction of frames that may be uploaded, in (0, 1].
        window: how many recent scores the quantile looks at.
        random_fraction: share of each batch's allowance spent on random frames.
        class_balance: pick candidates round-robin over predicted classes.
        seed: for the random share.
    """

    def __init__(
        self,
        budget: float = 0.1,
        window: int = 512,
        random_fraction: float = 0.0,
        class_balance: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0 < budget <= 1:
            raise ConfigError(f"upload budget must be in (0, 1], got {budget}")
        if not 0 <= random_fraction <= 1:
            raise ConfigError(f"random_fraction must be in [0, 1], got {random_fraction}")
        self.budget, self.random_fraction, self.class_balance = (
            budget,
            random_fraction,
            class_balance,
        )
        self.recent: deque[float] = deque(maxlen=window)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.selected = 0

    def select(self, scores: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """Indices of this batch's frames to upload (sorted)."""
        self.recent.extend(float(s) for s in scores)
        self.seen += len(scores)
        allowance = int(np.floor(self.budget * self.seen)) - self.selected
        if allowance <= 0 or len(scores) == 0:
            return np.zeros(0, dtype=np.int64)
        allowance = min(allowance, len(scores))
        n_random = int(round(self.random_fraction * allowance))
        threshold = float(np.quantile(np.fromiter(self.recent, float), 1 - self.budget))
        candidates = np.flatnonzero(scores >= threshold)
        ranked = (
            class_balanced(scores[candidates], predictions[candidates], allowance - n_random)
            if self.class_balance and predictions is not None
            else top_k(scores[candidates], allowance - n_random)
        )
        chosen = set(candidates[ranked].tolist())
        rest = np.array(sorted(set(range(len(scores))) - chosen), dtype=np.int64)
        if n_random and len(rest):
            chosen.update(
                self.rng.choice(rest, size=min(n_random, len(rest)), replace=False).tolist()
            )
        picked = np.array(sorted(chosen), dtype=np.int64)
        self.selected += len(picked)
        return picked

    @property
    def uploaded_fraction(self) -> float:
        """Frames selected so far / frames seen so far."""
        return self.selected / self.seen if self.seen else 0.0
