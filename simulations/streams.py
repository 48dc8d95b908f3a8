"""Shifting test streams over a corrupted benchmark: continual, random orders, gradual, per device.

The continual protocol is CoTTA's (https://arxiv.org/abs/2203.13591): the 15 corruptions
in a fixed order at one severity, fixed batch size, no reset between domains. A stream
is a list of segments (one domain each); batches never straddle two segments, so every
prediction belongs to exactly one domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud.data.corruptions import TEST_CORRUPTIONS
from cloud.data.formats import CorruptedDataset
from protocol.errors import ConfigError, unknown_name

GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)
STREAM_KINDS = ("continual", "random", "gradual")


@dataclass(frozen=True)
class Segment:
    """``count`` images of one domain, starting at image ``offset`` of that severity block."""

    corruption: str
    severity: int
    count: int
    offset: int = 0

    @property
    def domain(self) -> str:
        """Name used in reports, e.g. ``fog`` (the severity is in the stream's name)."""
        return self.corruption


@dataclass(frozen=True)
class StreamSpec:
    """An ordered list of segments plus the batch size the device sees."""

    name: str
    segments: tuple[Segment, ...]
    batch_size: int = 64
    meta: dict[str, object] = field(default_factory=dict)

    def domains(self) -> list[str]:
        """Distinct domains in first-seen order."""
        return list(dict.fromkeys(s.domain for s in self.segments))

    def num_images(self) -> int:
        """Total images in the stream."""
        return sum(s.count for s in self.segments)

    def num_batches(self) -> int:
        """Batches in the stream (a batch never straddles two segments)."""
        return sum(-(-s.count // self.batch_size) for s in self.segments)


@dataclass(frozen=True)
class Batch:
    """One batch of a stream: (batch, H, W, 3) uint8 images, (batch,) int64 labels, its segment."""

    images: np.ndarray
    labels: np.ndarray
    segment: Segment
    index: int


def continual(
    corruptions: Sequence[str] = TEST_CORRUPTIONS,
    severity: int = 5,
    num_per_domain: int = 1000,
    batch_size: int = 64,
    offset: int = 0,
) -> StreamSpec:
    """CoTTA's continual protocol: every corruption once, in order, at one severity."""
    segments = tuple(Segment(c, severity, num_per_domain, offset) for c in corruptions)
    return StreamSpec(f"continual-s{severity}", segments, batch_size)


def random_order(
    seed: int,
    corruptions: Sequence[str] = TEST_CORRUPTIONS,
    severity: int = 5,
    num_per_domain: int = 1000,
    batch_size: int = 64,
    offset: int = 0,
) -> StreamSpec:
    """The continual protocol with the corruption order shuffled by ``seed``."""
    order = [corruptions[i] for i in np.random.default_rng(seed).permutation(len(corruptions))]
    spec = continual(order, severity, num_per_domain, batch_size, offset)
    return StreamSpec(f"random{seed}-s{severity}", spec.segments, batch_size, {"order_seed": seed})


def gradual(
    corruptions: Sequence[str] = TEST_CORRUPTIONS,
    num_per_step: int = 200,
    batch_size: int = 64,
    offset: int = 0,
) -> StreamSpec:
    """Each corruption walks severity 1->5->1 (CoTTA's gradual setting), in ``num_per_step`` chunks."""
    segments = []
    for corruption in corruptions:
        for step, severity in enumerate(GRADUAL_SEVERITIES):
            segments.append(
                Segment(corruption, severity, num_per_step, offset + step * num_per_step)
            )
    return StreamSpec("gradual", tuple(segments), batch_size)


def parse_stream(
    spec: str,
    corruptions: Sequence[str] = TEST_CORRUPTIONS,
    severity: int = 5,
    num_per_domain: int = 1000,
    batch_size: int = 64,
) -> list[StreamSpec]:
    """``continual``, ``gradual``, ``random`` (seed 0), ``random:K`` (K orders, seeds 0..K-1).

    For ``gradual``, ``num_per_domain`` is spread over the nine severity steps.
    """
    kind, _, arg = spec.partition(":")
    if kind == "continual":
        return [continual(corruptions, severity, num_per_domain, batch_size)]
    if kind == "gradual":
        per_step = max(1, num_per_domain // len(GRADUAL_SEVERITIES))
        return [gradual(corruptions, per_step, batch_size)]
    if kind == "random":
        if not (arg or "1").isdigit() or int(arg or "1") < 1:
            raise ConfigError(f"random:K needs an integer K >= 1, got {arg!r}")
        return [
            random_order(seed, corruptions, severity, num_per_domain, batch_size)
            for seed in range(int(arg or "1"))
        ]
    raise unknown_name("stream", kind, ["continual", "random", "random:K", "gradual"])


def device_streams(
    base: StreamSpec, num_devices: int, pool_size: int, seed: int = 0
) -> list[StreamSpec]:
    """Give each of ``num_devices`` its own order and image offset over the same pool.

    Device 0 keeps ``base``; device i > 0 gets the domains in an order drawn from
    (seed, i) and starts every segment ``i * count`` images further into the pool
    (wrapping), so devices rarely see the same image at the same time.
    """
    if num_devices < 1:
        raise ConfigError(f"num_devices must be >= 1, got {num_devices}")
    streams = [base]
    domains = base.domains()
    for device in range(1, num_devices):
        rng = np.random.default_rng([seed, device])
        rank = {d: i for i, d in enumerate(domains[j] for j in rng.permutation(len(domains)))}
        ordered = sorted(
            base.segments, key=lambda s: rank[s.domain]
        )  # stable: keeps severities' order
        shifted = tuple(
            Segment(
                s.corruption,
                s.severity,
                s.count,
                (s.offset + device * s.count) % max(1, pool_size - s.count + 1),
            )
            for s in ordered
        )
        streams.append(
            StreamSpec(f"{base.name}-device{device}", shifted, base.batch_size, {"device": device})
        )
    return streams


def check_available(dataset: CorruptedDataset, segments: Iterable[Segment]) -> None:
    """Fail before any work, with the loader's own message, if a domain is missing or too short."""
    for segment in segments:
        last = segment.offset + segment.count - 1
        dataset.load(segment.corruption, segment.severity, count=1, offset=last)


def iterate_batches(dataset: CorruptedDataset, spec: StreamSpec) -> Iterator[Batch]:
    """Yield the stream's batches in order, loading one segment at a time."""
    index = 0
    for segment in spec.segments:
        data = dataset.load(segment.corruption, segment.severity, segment.count, segment.offset)
        for start in range(0, len(data), spec.batch_size):
            stop = start + spec.batch_size
            yield Batch(data.images[start:stop], data.labels[start:stop], segment, index)
            index += 1
