"""``FairQueue``: inbox files waiting for the adaptation worker, served round robin over devices.

One queue in arrival order let a device that floods the server delay every other device's
prompt by its whole backlog. Here each device has its own queue and the worker takes one
batch from each device in turn, so a device waits behind at most one batch of every other
device. Within a device the order stays the arrival order (a session's buffer depends on
it); the worker's catch-up still fits only on a device's newest waiting batch.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from pathlib import Path


class FairQueue:
    """Per-device FIFO queues, taken round robin; lives on the server's event loop."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[Path]] = OrderedDict()
        self._ready = asyncio.Event()

    def put(self, device_id: str, path: Path) -> None:
        """Queue ``path`` behind the device's other waiting batches."""
        self._queues.setdefault(device_id, deque()).append(path)
        self._ready.set()

    async def get(self) -> tuple[str, Path]:
        """The next device in turn and its oldest waiting batch."""
        while not self._queues:
            self._ready.clear()
            await self._ready.wait()
        device_id, queue = next(iter(self._queues.items()))
        path = queue.popleft()
        del self._queues[device_id]  # to the back of the rotation (if it has more waiting)
        if queue:
            self._queues[device_id] = queue
        return device_id, path

    def waiting(self, device_id: str) -> int:
        """Batches of ``device_id`` still queued."""
        queue = self._queues.get(device_id)
        return len(queue) if queue else 0

    def drop(self, device_id: str) -> list[Path]:
        """Remove and return everything ``device_id`` has queued."""
        return list(self._queues.pop(device_id, ()))

    def qsize(self) -> int:
        """Batches queued, all devices."""
        return sum(len(q) for q in self._queues.values())
