"""Uncertainty scores over what the ONNX model outputs, in NumPy only; must not import torch.

Used by Uncertainty Guided Sampling (UGS, Gan et al., CVPR 2023,
https://arxiv.org/abs/2212.00972): higher score = more uncertain = more worth uploading.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probs


def entropy(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N,) entropy of the softmax divided by log C, in [0, 1]."""
    probs = softmax(logits.astype(np.float64))
    nats = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    scores: np.ndarray = (nats / np.log(logits.shape[1])).astype(np.float32)
    return scores


def margin(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N,) ``1 - (p_top1 - p_top2)`` in [0, 1]; 1 = a tie."""
    probs = np.sort(softmax(logits.astype(np.float64)), axis=1)
    scores: np.ndarray = (1.0 - (probs[:, -1] - probs[:, -2])).astype(np.float32)
    return scores


def disagreement(logit_views: Sequence[np.ndarray]) -> np.ndarray:
    """Variance of class probabilities across views (flips, noise), summed over classes.

    As in SVDP's MC-dropout uncertainty (variance over stochastic passes), with cheap input
    perturbations instead of dropout: an ONNX model on the device has no dropout to sample.

    Args:
        logit_views: V arrays of (N, C) logits for the same N images under V perturbations.

    Returns:
        (N,) float32, 0 when every view agrees.
    """
    probs = np.stack([softmax(v.astype(np.float64)) for v in logit_views])  # (V, N, C)
    scores: np.ndarray = probs.var(axis=0).sum(axis=1).astype(np.float32)
    return scores


def perturbed_views(
    images: np.ndarray, noise_std: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """The extra views disagreement uses: the horizontal mirror and a noisy copy (uint8)."""
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    noise = rng.normal(0.0, noise_std * 255.0, size=images.shape)
    noisy = np.clip(images.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return [mirrored, noisy]
