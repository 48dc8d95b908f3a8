"""The device's own check on the cloud's prompt, batch by batch, in NumPy only; no torch.

The cloud's safety valve (``cloud.adaptation.vplu``) judges a prompt by agreement with its
targets on held-out uploads, and where the teacher is weaker than the device (in the
benchmark cloud_models: brightness, JPEG, pixelate) a prompt can agree better with the teacher and
still be worse than no prompt. The device cannot see labels either, but it sees every frame
of the batch: with the gate on it runs the batch twice, under the prompt and under the
fallback (the shipped defaults with its own batch statistics, i.e. BN-adapt), and answers
with the run whose mean prediction entropy is lower. Entropy as the unsupervised judge of a
whole batch follows Tent (Wang et al., "Tent: Fully Test-time Adaptation by Entropy
Minimization", ICLR 2021, https://arxiv.org/abs/2006.10726), which minimises the same
quantity; here it only chooses, nothing is trained. Chosen per batch, not per frame: per
frame, the surer of two views is often the wrong one (docs/uvpa.md).

The uploads and the batch statistics stay those of the prompted run, because they are what
the cloud learns the next prompt from.
"""

from __future__ import annotations

import numpy as np

from device.uncertainty import entropy


def prefers_prompt(prompted: np.ndarray, fallback: np.ndarray) -> bool:
    """Whether the prompted (N, C) logits are, on average over the batch, at most as uncertain.

    Ties keep the prompt: the cloud's safety valve already approved it.
    """
    if prompted.shape != fallback.shape:
        raise ValueError(f"logits differ in shape: {prompted.shape} vs {fallback.shape}")
    return float(entropy(prompted).mean()) <= float(entropy(fallback).mean())
