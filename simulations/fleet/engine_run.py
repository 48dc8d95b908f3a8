"""What every fleet engine returns: per device, its batch records and bytes down; the cloud's counters.

The in-process loop, the gRPC processes and both Flower engines fill the same value, so the
report cannot tell which engine ran except by the counters each adds to ``cloud``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device.replay import BatchRecord


@dataclass
class EngineRun:
    """One U-VPA run of the fleet."""

    records: list[list[BatchRecord]]  # per device, in device order, one per batch
    bytes_down: list[int]  # per device: prompt bytes it received
    cloud: dict[str, Any] = field(default_factory=dict)  # the engine's cloud counters

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (``flower-results.json``)."""
        return {
            "records": [[r.to_json() for r in device] for device in self.records],
            "bytes_down": self.bytes_down,
            "cloud": self.cloud,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineRun:
        """The inverse of ``to_json``."""
        return cls(
            [[BatchRecord.from_json(r) for r in device] for device in data["records"]],
            [int(b) for b in data["bytes_down"]],
            dict(data.get("cloud", {})),
        )
