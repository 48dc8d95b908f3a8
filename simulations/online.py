"""Online accuracy of one method over one stream, the protocol every table here uses.

Every batch is predicted *before* the method adapts on it, and every prediction counts, as
in CoTTA's protocol (Wang et al., CVPR 2022, https://arxiv.org/abs/2203.13591).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch

from cloud.data.formats import CorruptedDataset
from cloud.students.preprocess import pixels_from_uint8
from simulations.peers.base import AdaptationMethod, SavedActivations
from simulations.streams import StreamSpec, iterate_batches

# autograd's saved activations are measured on the first batches (one RoTTA update included)
MEASURED_BATCHES = 3


class OnlineMethod(Protocol):
    """What the benchmark drives: predict-then-adapt per batch, plus what it cost."""

    name: str
    uses_backprop: bool

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict the batch (returned logits), then adapt on it."""
        ...

    def costs(self) -> dict[str, float]:
        """Uploads, bytes per 1,000 frames and cloud compute so far."""
        ...


MethodMaker = Callable[[str], OnlineMethod]
ProgressFn = Callable[[str, int], None]  # (description, images advanced)


@dataclass
class MethodResult:
    """One method on one stream."""

    method: str
    stream: str
    domains: list[str]
    accuracy: dict[str, float]  # per domain, in [0, 1]
    mean: float  # mean over domains (each domain weighs the same)
    num_images: int
    seconds: float
    batch_accuracy: list[float] = field(default_factory=list)  # for curves
    batch_domain: list[str] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)  # uploads, bytes, cloud compute
    uses_backprop: bool = False
    hyperparameters: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Plain dict for ``results.json``."""
        return asdict(self)


def run_method(
    method_name: str,
    make: MethodMaker,
    dataset: CorruptedDataset,
    stream: StreamSpec,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> MethodResult:
    """Feed ``stream`` to a fresh instance of ``method_name`` and score its online predictions."""
    torch.manual_seed(seed)
    method = make(method_name)
    correct: dict[str, int] = dict.fromkeys(stream.domains(), 0)
    seen: dict[str, int] = dict.fromkeys(stream.domains(), 0)
    batch_accuracy, batch_domain = [], []
    start = time.perf_counter()
    activations = 0
    for number, batch in enumerate(iterate_batches(dataset, stream)):
        pixels = pixels_from_uint8(batch.images)
        if getattr(method, "wants_labels", False):  # the reference row's cloud learns from labels
            method.reveal_labels(pixels, batch.labels)  # type: ignore[attr-defined]
        if number < MEASURED_BATCHES and isinstance(method, AdaptationMethod):
            with SavedActivations() as saved:
                logits = method.step(pixels)
            activations = max(activations, saved.bytes)
        else:
            logits = method.step(pixels)
        hits = int((logits.argmax(1).numpy() == batch.labels).sum())
        correct[batch.segment.domain] += hits
        seen[batch.segment.domain] += len(batch.labels)
        batch_accuracy.append(hits / len(batch.labels))
        batch_domain.append(batch.segment.domain)
        if progress:
            progress(f"{method_name} · {batch.segment.domain}", len(batch.labels))
    accuracy = {d: correct[d] / seen[d] for d in stream.domains() if seen[d]}
    return MethodResult(
        method=method_name,
        stream=stream.name,
        domains=list(accuracy),
        accuracy=accuracy,
        mean=float(np.mean(list(accuracy.values()))),
        num_images=sum(seen.values()),
        seconds=time.perf_counter() - start,
        batch_accuracy=batch_accuracy,
        batch_domain=batch_domain,
        costs=_costs(method, activations),
        uses_backprop=method.uses_backprop,
        hyperparameters=dict(getattr(method, "hyperparameters", {})),
    )


def _costs(method: OnlineMethod, activation_bytes: int) -> dict[str, float]:
    costs = method.costs()
    if isinstance(method, AdaptationMethod):
        costs["device_activations_mb"] = activation_bytes / 2**20
    return costs
