"""``[fleet]``: a simulated fleet for ``cdca simulate``: how many devices, which streams, which engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.config.loader import check_choices
from protocol.errors import ConfigError

Engine = Literal["inprocess", "grpc", "flower-sim", "flower"]
Stream = Literal["continual", "gradual"]
PEERS = ("source", "bn_adapt", "tent")  # the on-device methods every fleet report compares with
# every on-device method the report can add (simulations.peers registers them; a test checks)
ON_DEVICE_PEERS = (
    "source",
    "bn_adapt",
    "forward_only",
    "tent",
    "eata",
    "sar",
    "rotta",
    "roid",
    "cotta",
    "vdp",
)


@dataclass(frozen=True)
class FleetConfig:
    """[fleet]: the devices ``cdca simulate`` runs through the shifted data.

    Attributes:
        engine: how uploads and prompts travel: ``inprocess``, ``grpc`` (a real server and
            one process per device), ``flower-sim`` (Flower's Simulation Engine) or
            ``flower`` (Flower's Deployment Engine on loopback).
        devices: number of devices.
        corruptions: the domains every device walks through, from ``data.shifted``; empty:
            every one of the 15 test corruptions it holds. Device 0 takes them in this
            order, the others in seeded random orders.
        stream: ``continual`` (one severity) or ``gradual`` (severity 1 to 5 and back
            within each corruption).
        severity: of a continual stream, 1 to 5.
        per_domain: frames per corruption per device.
        batch_size: frames per device batch.
        batches_per_round: device batches between two prompt deliveries.
        peers: on-device methods run on the same streams for comparison.
        compare_bank: also run U-VPA without the environment bank (one more run).
        seed: orders the streams and the devices' random picks.
        round_timeout_s: Flower engines: a round waits this long for replies.
        min_devices: Flower engines: fewest replies that still make a round.
        max_missed_rounds: Flower engines: rounds a device may miss in a row (no reply in
            time, or an error) before the run goes on without it; a run left with fewer
            than min_devices devices fails, saying why.
        slow_device: Flower engines: this device answers late (a straggler); -1: none.
        slow_rounds: the straggler's slow rounds, from the first.
        slow_delay_s: how late it answers.
        fps: grpc engine: pace each device like a camera, in frames per second; 0: as fast
            as it can.
    """

    engine: Engine = "inprocess"
    devices: int = 4
    corruptions: tuple[str, ...] = ()
    stream: Stream = "continual"
    severity: int = 5
    per_domain: int = 500
    batch_size: int = 64
    batches_per_round: int = 1
    peers: tuple[str, ...] = PEERS
    compare_bank: bool = False
    seed: int = 0
    round_timeout_s: float = 120.0
    min_devices: int = 1
    max_missed_rounds: int = 5
    slow_device: int = -1
    slow_rounds: int = 0
    slow_delay_s: float = 0.0
    fps: float = 0.0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.devices < 1 or self.per_domain < 1 or self.batch_size < 1:
            raise ConfigError("devices, per_domain and batch_size must be >= 1")
        if self.batches_per_round < 1:
            raise ConfigError("batches_per_round must be >= 1")
        if not 1 <= self.severity <= 5:
            raise ConfigError(f"severity must be 1..5, got {self.severity}")
        if self.max_missed_rounds < 1:
            raise ConfigError(f"max_missed_rounds must be >= 1, got {self.max_missed_rounds}")
        if not 1 <= self.min_devices <= self.devices:
            raise ConfigError(f"min_devices must be between 1 and devices ({self.devices})")
        unknown = sorted(set(self.peers) - set(ON_DEVICE_PEERS))
        if unknown:
            raise ConfigError(f"peers {unknown} unknown; choose from {list(ON_DEVICE_PEERS)}")
        if self.fps < 0 or self.round_timeout_s <= 0 or self.slow_delay_s < 0:
            raise ConfigError("fps and slow_delay_s must be >= 0, round_timeout_s > 0")
