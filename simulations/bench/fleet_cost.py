"""The cloud's cost per device update as the fleet grows: one device at a time against batched.

One fleet round: every device's upload buffer is full (192 uploads), then each device sends
a batch of 6 and the cloud refits its prompt. One-at-a-time runs ``FleetCloud.ingest`` per
device, what a cloud without batching does; batched runs ``FleetCloud.ingest_many`` once
for the whole fleet (one teacher pass, shared model passes). A one-at-a-time round costs
the same per device at every fleet size (each fit is alone), so it is timed on at most
``SEQUENTIAL_SAMPLE`` devices; the batched round always runs the whole fleet. Beside it,
``pass_cost_curve``: the cost per sample of one model pass as the pass grows, which is
what decides whether batching can pay on this hardware.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from cloud.accelerator import synchronize
from cloud.adaptation.fleet import DeviceBatch, FleetCloud
from cloud.adaptation.session import SessionConfig, UploadBatch
from cloud.adaptation.vplu import VPLU
from cloud.server.models import CloudModels
from simulations.harness.memory import tree_rss_bytes

PASS_SIZES = (64, 256, 1024, 4096)  # samples in one forward and backward pass
SEQUENTIAL_SAMPLE = 16  # devices timed one at a time (the cost per device does not depend on N)
BUFFER, STEP = 192, 6  # uploads buffered per device; uploads per device in the timed round


def fleet_cost_curve(
    cloud_models: CloudModels,
    pixels: torch.Tensor,
    stats: torch.Tensor,
    devices: tuple[int, ...],
    progress: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Per fleet size: cloud ms per device update, one at a time and batched, and the RSS."""
    curve = {}
    for count in devices:
        progress(f"fleet of {count}: one device at a time, then batched")
        alone = _round_ms(cloud_models, pixels, stats, min(count, SEQUENTIAL_SAMPLE), False)
        batched = _round_ms(cloud_models, pixels, stats, count, True)
        curve[str(count)] = {
            "one_at_a_time_ms_per_device": round(alone / min(count, SEQUENTIAL_SAMPLE), 1),
            "batched_ms_per_device": round(batched / count, 1),
            "process_rss_mb": round(tree_rss_bytes(os.getpid()) / 2**20, 1),
        }
    return curve


def pass_cost_curve(
    cloud_models: CloudModels, pixels: torch.Tensor, repeats: int = 3
) -> dict[str, float]:
    """Microseconds per sample of one forward and backward of a fit (its precision), by pass size.

    What batching many devices can save: if the cost per sample falls as a pass grows, one
    pass for many devices is cheaper than one per device; on a CPU it does not.
    """
    vplu = VPLU(cloud_models.device_model, cloud_models.class_vectors, cloud_models.adaptation.fit)
    norm_affine = torch.zeros(
        2, vplu.model.num_norm_channels, device=vplu.device, requires_grad=True
    )
    curve = {}
    for size in PASS_SIZES:
        x = cloud_models.normalization.apply(pixels[torch.arange(size) % len(pixels)])
        inputs = vplu.model.neutral_inputs(vplu.fit_class_vectors)
        inputs.update(x=x.to(vplu.device), norm_affine=norm_affine)
        del inputs["stat_mix"]

        _pass(vplu, inputs)  # warm-up
        synchronize(vplu.device)
        began = time.perf_counter()
        for _ in range(repeats):
            _pass(vplu, inputs)
        synchronize(vplu.device)
        curve[str(size)] = round((time.perf_counter() - began) / repeats / size * 1e6, 1)
    return curve


def _pass(vplu: VPLU, inputs: dict[str, torch.Tensor]) -> None:
    vplu.replayed_logits(inputs).logsumexp(1).sum().backward()


def _round_ms(
    cloud_models: CloudModels, pixels: torch.Tensor, stats: torch.Tensor, count: int, batched: bool
) -> float:
    """Milliseconds of one round in which ``count`` devices with full buffers each upload."""
    cloud = _filled_fleet(cloud_models, pixels, stats, count)
    step = [
        DeviceBatch(f"d{d}", UploadBatch(pixels[:STEP], torch.rand(STEP), stats))
        for d in range(count)
    ]
    start = time.perf_counter()
    if batched:
        cloud.ingest_many(step)
    else:
        for item in step:
            cloud.ingest(item.device_id, item.upload)
    return (time.perf_counter() - start) * 1e3


def _filled_fleet(
    cloud_models: CloudModels, pixels: torch.Tensor, stats: torch.Tensor, count: int
) -> FleetCloud:
    """A fleet whose devices each buffered ``BUFFER`` uploads, without fitting (the steady state)."""
    adaptation = replace(cloud_models.adaptation, session=SessionConfig(BUFFER, 24))
    cloud = cloud_models.new_fleet(adaptation)
    full = UploadBatch(pixels[:BUFFER], torch.rand(BUFFER), stats)
    cloud.ingest_many([DeviceBatch(f"d{d}", full, fit=False) for d in range(count)])
    return cloud
