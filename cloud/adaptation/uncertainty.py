"""Torch twins of ``device/uncertainty.py`` (same definitions; a parity test keeps them equal).

The cloud scores uploaded samples with these, e.g. to weight them or to hold out the
confident ones for the safety valve. Reference: Gan et al., U-VPA, CVPR 2023
(https://arxiv.org/abs/2212.00972).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) logits -> (N,) softmax entropy divided by log C, in [0, 1]."""
    log_p = logits.double().log_softmax(dim=1)
    return (-(log_p.exp() * log_p).sum(dim=1) / math.log(logits.shape[1])).float()


def margin(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) logits -> (N,) ``1 - (p_top1 - p_top2)``."""
    top2 = logits.double().softmax(dim=1).topk(2, dim=1).values
    return (1.0 - (top2[:, 0] - top2[:, 1])).float()


def disagreement(logit_views: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N,) variance of class probabilities across views, summed over classes."""
    probs = torch.stack([v.double().softmax(dim=1) for v in logit_views])
    return probs.var(dim=0, unbiased=False).sum(dim=1).float()
