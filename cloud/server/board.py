"""``PromptBoard``: the latest prompt published for each device, and the streams waiting on it.

``WatchPrompts`` handlers wait here instead of polling; publishing wakes them all and each
checks whether its device got something newer. Lives on the server's event loop.
"""

from __future__ import annotations

import asyncio

from protocol.v1 import cdca_pb2


class PromptBoard:
    """Latest ``Prompt`` per device id; ``wait_newer`` blocks until one beats a known version."""

    def __init__(self) -> None:
        self._latest: dict[str, cdca_pb2.Prompt] = {}
        self._changed = asyncio.Condition()
        self._closed = False

    def latest(self, device_id: str) -> cdca_pb2.Prompt | None:
        """The newest prompt for the device, or None."""
        return self._latest.get(device_id)

    def restore(self, device_id: str, prompt: cdca_pb2.Prompt) -> None:
        """Put back a prompt found on disk at start-up (no one is waiting yet)."""
        self._latest[device_id] = prompt

    async def publish(self, device_id: str, prompt: cdca_pb2.Prompt) -> None:
        """Make ``prompt`` the device's latest and wake its watchers."""
        async with self._changed:
            self._latest[device_id] = prompt
            self._changed.notify_all()

    async def wait_newer(
        self, device_id: str, known_version: int, timeout: float
    ) -> cdca_pb2.Prompt | None:
        """The device's prompt once its version exceeds ``known_version``; None on timeout/close."""

        def newer() -> bool:
            prompt = self._latest.get(device_id)
            return self._closed or (prompt is not None and prompt.version > known_version)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(newer), timeout)
            except TimeoutError:
                return None
            prompt = self._latest.get(device_id)
        if self._closed or prompt is None or prompt.version <= known_version:
            return None
        return prompt

    async def close(self) -> None:
        """Release every waiter (server shutdown)."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        """True after ``close``."""
        return self._closed
