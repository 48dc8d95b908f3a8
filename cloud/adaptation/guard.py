"""Bounds on what a device sends to the adaptation core and on every prompt that leaves a fit.

A device is untrusted: a buggy or compromised one can send statistics that are finite but
absurd, and a fit on them can return NaN or huge prompts. Every number a device controls is
checked here against bounds relative to the served model itself (so they hold for any
cloud_models, not one data set), and every prompt is checked before it is accepted, saved,
published, aggregated or banked.

The bounds sit about a thousand times beyond what honest devices send: on the built-in
cloud_models, batch means of the shipped student stay within 0.9 running standard deviations of
its running means and batch variances within 0.03-18 times its running variances, over
every corruption at severities 1 and 5. A prompt moves each entry by Adam steps of a few
thousandths from the unadapted student's; an entry 100 away is no fit.
"""

from __future__ import annotations

import torch

Prompt = dict[str, torch.Tensor]
MEAN_LIMIT_SDS = 1e3  # |batch mean - running mean| <= this many running standard deviations
VAR_LIMIT_RATIO = 1e6  # batch variance <= this many times the running variance
PROMPT_LIMIT = 100.0  # |prompt entry - unadapted entry|


def stats_problem(batch_stats: torch.Tensor, running_stats: torch.Tensor) -> str | None:
    """Why (2, K) batch mean/variance cannot come from the served model, or None when they can."""
    if batch_stats.shape != running_stats.shape:
        return f"batch_stats must be {tuple(running_stats.shape)}, got {tuple(batch_stats.shape)}"
    stats = batch_stats.double()
    if not torch.isfinite(stats).all():
        return "batch_stats contain NaN or Inf"
    running_mean, running_var = running_stats.double()
    scale = torch.sqrt(running_var.clamp_min(1e-8))
    if ((stats[0] - running_mean).abs() > MEAN_LIMIT_SDS * scale).any():
        return f"batch means lie over {MEAN_LIMIT_SDS:g} standard deviations from the model's"
    if (stats[1] < 0).any() or (stats[1] > VAR_LIMIT_RATIO * running_var.clamp_min(1e-8)).any():
        return f"batch variances must be in [0, {VAR_LIMIT_RATIO:g} x the model's]"
    return None


def prompt_problem(prompt: Prompt, neutral: Prompt) -> str | None:
    """Why ``prompt`` must not reach a device, or None: same parts and shapes, finite, bounded."""
    if set(prompt) != set(neutral):
        return f"prompt parts {sorted(prompt)} are not the model's {sorted(neutral)}"
    for name, value in prompt.items():
        if value.shape != neutral[name].shape:
            return f"prompt part {name!r} is {tuple(value.shape)}, not {tuple(neutral[name].shape)}"
        if not torch.isfinite(value).all():
            return f"prompt part {name!r} holds NaN or Inf"
        if (value.double() - neutral[name].double()).abs().max() > PROMPT_LIMIT:
            return f"prompt part {name!r} moves an entry over {PROMPT_LIMIT:g} from the model's"
    return None
