"""What one device may cost the server: token buckets for samples and shifts, inbox byte quotas.

Written here rather than taken from a rate-limiting library: those answer "allowed or not"
for one request, while an upload is granted in part (the samples that fit, the rest refused
over budget), and the server's one event loop needs no locks or storage backends. Every
count is the server's own (samples received, bytes written, its clock); nothing a device
reports can raise them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.config.server import LimitsConfig


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; ``take`` grants what is there."""

    rate: float
    capacity: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.updated = self.capacity, self.clock()

    def available(self) -> int:
        """Whole tokens there now."""
        self._refill()
        return int(self.tokens)

    def take(self, wanted: int) -> int:
        """Grant up to ``wanted`` whole tokens; returns how many."""
        granted = max(0, min(int(wanted), self.available()))
        self.tokens -= granted
        return granted

    def seconds_until(self, wanted: int) -> float:
        """How long until ``wanted`` tokens are there (0 when they are)."""
        self._refill()
        missing = min(wanted, self.capacity) - self.tokens
        return max(0.0, missing / self.rate)

    def _refill(self) -> None:
        """Add the tokens earned since the last look, up to ``capacity``."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


class DeviceAllowances:
    """Each device's sample and shift buckets, created on first use."""

    def __init__(self, limits: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self._samples: dict[str, TokenBucket] = {}
        self._shifts: dict[str, TokenBucket] = {}

    def samples(self, device_id: str, wanted: int) -> int:
        """Samples of ``wanted`` the device may upload now."""
        return self._sample_bucket(device_id).take(wanted)

    def seconds_until_sample(self, device_id: str) -> float:
        """0 while the device may upload a sample; else how long until it may."""
        return self._sample_bucket(device_id).seconds_until(1)

    def available_samples(self, device_id: str) -> int:
        """Samples the device may upload now (none taken): the most worth decoding."""
        return self._sample_bucket(device_id).available()

    def shift(self, device_id: str) -> bool:
        """Whether the device may report a new environment now."""
        limits = self.limits
        bucket = self._bucket(
            self._shifts, device_id, limits.shifts_per_minute / 60, limits.shift_burst
        )
        return bucket.take(1) == 1

    def _sample_bucket(self, device_id: str) -> TokenBucket:
        limits = self.limits
        return self._bucket(
            self._samples, device_id, limits.samples_per_second, limits.sample_burst
        )

    def _bucket(
        self, buckets: dict[str, TokenBucket], device_id: str, rate: float, capacity: int
    ) -> TokenBucket:
        """The device's bucket in ``buckets``, full when it is first used."""
        if device_id not in buckets:
            buckets[device_id] = TokenBucket(rate, capacity, self.clock)
        return buckets[device_id]


class InboxQuota:
    """Bytes of uploads waiting for the worker, per device and in total."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.waiting: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """Bytes waiting, all devices."""
        return sum(self.waiting.values())

    def refusal(self, device_id: str, size: int) -> str | None:
        """Why ``size`` more bytes from ``device_id`` cannot wait in the inbox now, or None."""
        if self.waiting[device_id] + size > self.limits.inbox_bytes_per_device:
            return "this device's uploads waiting in the cloud's inbox are over its quota"
        if self.total + size > self.limits.inbox_bytes_total:
            return "the cloud's inbox is full"
        return None

    def add(self, device_id: str, size: int) -> None:
        """``size`` bytes of ``device_id`` now wait."""
        self.waiting[device_id] += size

    def remove(self, device_id: str, size: int) -> None:
        """``size`` bytes of ``device_id`` left the inbox."""
        self.waiting[device_id] = max(0, self.waiting[device_id] - size)
        if not self.waiting[device_id]:
            del self.waiting[device_id]
