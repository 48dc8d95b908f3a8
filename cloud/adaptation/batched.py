"""Many devices' prompts through one model pass: samples grouped by device, prompts gathered per sample.

Every device runs the same student and differs only in its prompt parts and replayed
BatchNorm statistics, so the cloud can put the samples of many devices into one batch and
give each sample its own device's values (``DeviceModel.replayed_logits`` takes them per
sample). Devices stay independent: every loss is a sum of per-device terms, so each
device's gradient, and with it each device's Adam step (element-wise), is what a fit of
that device alone would give, up to floating-point noise.

Chunks bound memory and keep a pass where the hardware is fastest: on a 2-core CPU the
cost per sample of the compact student grows past a few hundred samples (the activations
leave the caches), on a GPU it falls up to many thousands (``default_chunk_samples``).
A chunk holding one device takes the plain single-prompt path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

CPU_CHUNK_SAMPLES = 256  # `cdca bench perf`: 2-core Xeon, 565 us/sample at 208, 793 at 832
CUDA_CHUNK_SAMPLES = 16384


def default_chunk_samples(device: torch.device) -> int:
    """Samples per pass on ``device``: a few hundred on a CPU, many thousands on a GPU."""
    return CUDA_CHUNK_SAMPLES if device.type == "cuda" else CPU_CHUNK_SAMPLES


@dataclass(frozen=True)
class Chunk:
    """Devices ``first`` to ``last`` (exclusive) and their samples, concatenated.

    Attributes:
        owner: (n,) each sample's device, counted from ``first``.
        x: (n, 3, H, W) the samples.
    """

    first: int
    last: int
    owner: torch.Tensor
    x: torch.Tensor

    @property
    def devices(self) -> int:
        """How many devices share this chunk."""
        return self.last - self.first

    def per_device(self, values: torch.Tensor) -> torch.Tensor:
        """(n,) per-sample values summed per device -> (devices,)."""
        out = torch.zeros(self.devices, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.owner, values)


def chunks(xs: list[torch.Tensor], max_samples: int) -> Iterator[Chunk]:
    """Consecutive devices packed into chunks of at most ``max_samples`` (one device may exceed it)."""
    first = 0
    while first < len(xs):
        last, total = first + 1, len(xs[first])
        while last < len(xs) and total + len(xs[last]) <= max_samples:
            total += len(xs[last])
            last += 1
        sizes = torch.tensor([len(x) for x in xs[first:last]])
        owner = torch.repeat_interleave(torch.arange(last - first), sizes)
        yield Chunk(first, last, owner.to(xs[first].device), torch.cat(xs[first:last]))
        first = last


def per_sample(
    chunk: Chunk, stacked: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Model inputs for a chunk: each stacked (devices, ...) value gathered for its samples.

    ``stacked`` holds one row per device of the whole call; ``shared`` the values every
    device has in common. A chunk of one device gets its row as a plain input.
    """
    rows = {k: v[chunk.first : chunk.last] for k, v in stacked.items()}
    if chunk.devices == 1:
        return {**shared, **{k: v[0] for k, v in rows.items()}}
    gathered = {k: v[chunk.owner] for k, v in rows.items()}
    if "norm_affine" in gathered or "norm_stats" in gathered:
        # per-sample BatchNorm needs both per sample
        for name in ("norm_affine", "norm_stats"):
            if name not in gathered:
                gathered[name] = shared[name].expand(len(chunk.owner), *shared[name].shape)
    return {**shared, **gathered}


def split_stacked(
    prompts: list[dict[str, torch.Tensor]], names: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-device prompts -> (stacked parts that differ between devices, shared parts)."""
    stacked, shared = {}, {}
    for name in names:
        first = prompts[0][name]
        if all(torch.equal(p[name], first) for p in prompts[1:]):
            shared[name] = first
        else:
            stacked[name] = torch.stack([p[name] for p in prompts])
    return stacked, shared
