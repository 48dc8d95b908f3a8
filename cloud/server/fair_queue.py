"""``FairQueue``: inbox files waiting for the adaptation worker, served fairly over devices.

One queue in arrival order let a device that floods the server delay every other device's
prompt by its whole backlog. Here each device has its own queue, and the worker serves
the waiting device that has used the least worker time: start-time fair queueing (Goyal
et al., "Start-time Fair Queueing", SIGCOMM 1996, https://doi.org/10.1145/248156.248171)
with seconds of adaptation as the cost. A device that floods gets its share of the
worker, not more, however many batches it queues; a device that was idle rejoins at the
busiest devices' level, so it cannot bank credit either. Within a device the order stays
the arrival order (a session's buffer depends on it); the worker's catch-up still fits
only on a device's newest waiting batch. ``take`` hands the worker one batch from each of
several devices, in the same order, for one shared fit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path


class FairQueue:
    """Per-device FIFO queues; ``get`` serves the device with the least worker time used."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Path]] = {}
        self._used: dict[str, float] = {}  # worker seconds per device (virtual time)
        self._ready = asyncio.Event()

    def put(self, device_id: str, path: Path) -> None:
        """Queue ``path`` behind the device's other waiting batches."""
        if device_id not in self._queues:  # (re)joining: no credit for the time it was idle
            floor = min((self._used[d] for d in self._queues), default=0.0)
            self._used[device_id] = max(self._used.get(device_id, 0.0), floor)
            self._queues[device_id] = deque()
        self._queues[device_id].append(path)
        self._ready.set()

    async def get(self) -> tuple[str, Path]:
        """The waiting device with the least worker time so far, and its oldest batch."""
        while not self._queues:
            self._ready.clear()
            await self._ready.wait()
        return self._pop(min(self._queues, key=lambda d: self._used[d]))

    async def take(self, devices: int) -> list[tuple[str, Path]]:
        """The oldest batch of up to ``devices`` waiting devices, least worker time first.

        Waits for the first; the others are whatever is already queued. One batch per device:
        a device's batches stay in order, each seeing the buffer the one before left.
        """
        taken = [await self.get()]
        served = {taken[0][0]}
        while len(taken) < devices:
            others = [d for d in self._queues if d not in served]
            if not others:
                break
            taken.append(self._pop(min(others, key=lambda d: self._used[d])))
            served.add(taken[-1][0])
        return taken

    def _pop(self, device_id: str) -> tuple[str, Path]:
        """The device's oldest batch, out of its queue (the queue goes when it empties)."""
        queue = self._queues[device_id]
        path = queue.popleft()
        if not queue:
            del self._queues[device_id]
        return device_id, path

    def charge(self, device_id: str, seconds: float) -> None:
        """The worker spent ``seconds`` on the device's batch."""
        self._used[device_id] = self._used.get(device_id, 0.0) + seconds

    def busiest(self, count: int = 5) -> list[tuple[str, float]]:
        """The devices that used the most worker seconds (roughly: idle spells are not credited)."""
        return sorted(self._used.items(), key=lambda item: -item[1])[:count]

    def waiting(self, device_id: str) -> int:
        """Batches of ``device_id`` still queued."""
        queue = self._queues.get(device_id)
        return len(queue) if queue else 0

    def ahead_of(self, device_id: str) -> int:
        """Waiting devices the worker serves before ``device_id`` (all of them if it waits for none).

        The order ``get`` and ``take`` follow: least worker time first, ties in the order the
        devices joined (a stable sort breaks ties as ``min`` does).
        """
        order = sorted(self._queues, key=lambda d: self._used[d])
        return order.index(device_id) if device_id in self._queues else len(order)

    def drop(self, device_id: str) -> list[Path]:
        """Remove and return everything ``device_id`` has queued, and its account."""
        self._used.pop(device_id, None)
        return list(self._queues.pop(device_id, ()))

    def devices(self) -> int:
        """Devices with batches queued."""
        return len(self._queues)

    def qsize(self) -> int:
        """Batches queued, all devices."""
        return sum(len(q) for q in self._queues.values())
