"""The fleet's shared prompt as a robust mean: no device can pull it far, whatever it sends.

Each device's contribution is its domain-agnostic prompt minus the unadapted student's (a
delta). Two bounds keep one device, buggy or hostile, from dominating: its weight (the
environments it has learned) is capped, and its delta is clipped to a multiple of the
median delta norm over the fleet: clipping around a robust centre, as in Karimireddy et al.,
"Learning from History for Byzantine Robust Optimization", ICML 2021
(https://arxiv.org/abs/2012.10333). Honest devices of one fleet have deltas of similar size,
so clipping leaves them as they are; a delta a hundred times the others' counts as twice
the median. A prompt that fails the guard (``cloud.adaptation.guard``) does not count.
"""

from __future__ import annotations

import torch

from cloud.adaptation.guard import Prompt, prompt_problem

CLIP_MEDIAN_MULTIPLE = 2.0


def robust_mean_prompt(
    contributions: list[tuple[Prompt, float]], neutral: Prompt, max_weight: float
) -> Prompt:
    """The weighted mean of absolute prompts, each weight capped and each delta clipped.

    Returns ``neutral`` (a copy) when no contribution has weight.
    """
    kept = [
        (p, min(w, max_weight))
        for p, w in contributions
        if w > 0 and prompt_problem(p, neutral) is None
    ]
    total = sum(weight for _, weight in kept)
    if total <= 0:
        return {k: v.clone() for k, v in neutral.items()}
    deltas = [({k: p[k] - neutral[k] for k in neutral}, w) for p, w in kept]
    norms = torch.tensor([_norm(delta) for delta, _ in deltas])
    limit = CLIP_MEDIAN_MULTIPLE * float(norms.median())
    mean = {k: torch.zeros_like(v) for k, v in neutral.items()}
    for (delta, weight), norm in zip(deltas, norms.tolist(), strict=True):
        factor = min(1.0, limit / norm) if norm > 0 else 1.0
        for k in mean:
            mean[k] += weight * factor * delta[k]
    return {k: neutral[k] + mean[k] / total for k in neutral}


def _norm(delta: Prompt) -> float:
    return float(sum(float((v.double() ** 2).sum()) for v in delta.values()) ** 0.5)
