"""The environment signature both sides compute from a batch's normalisation statistics.

A device's shift detector and the cloud's environment bank must agree on what "the same
environment" means, so the definition lives here: what the model's first normalisation
layer saw, as per-channel mean and log standard deviation (part of the ``batch_stats``
every upload carries, so it costs nothing extra). NumPy only.
"""

from __future__ import annotations

import numpy as np


def batch_signature(batch_stats: np.ndarray, channels: int) -> np.ndarray:
    """(2, K) batch mean/variance -> the first ``channels`` means and log standard deviations."""
    stats = np.asarray(batch_stats, dtype=np.float64)
    mean, var = stats[0, :channels], stats[1, :channels]
    signature: np.ndarray = np.concatenate([mean, 0.5 * np.log(np.maximum(var, 1e-8))])
    return signature


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two signatures (the unit the shift detector uses)."""
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
