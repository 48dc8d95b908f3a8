"""``PromptBoard``: the latest prompt published for each device, and the streams waiting on it.

``WatchPrompts`` handlers wait here instead of polling; publishing wakes them all and each
checks whether its device got something newer. Lives on the server's event loop.
"""

from __future__ import annotations

import asyncio

from protocol.v1 import cdca_pb2


class PromptBoard:
    """Latest ``Prompt`` per device id; ``wait_newer`` blocks until one beats a known version.

    Waiters wait on an ``asyncio.Event`` that every publication replaces, not on a lock:
    with a ``Condition``, 64 streams timing out and being cancelled at once left its lock
    unreleased on Python 3.11 and shutdown waited for it forever (found by
    ``cdca bench reliability``). Everything runs on one event loop, so no lock is needed.
    """

    def __init__(self) -> None:
        self._latest: dict[str, cdca_pb2.Prompt] = {}
        self._published = asyncio.Event()
        self._closed = False

    def latest(self, device_id: str) -> cdca_pb2.Prompt | None:
        """The newest prompt for the device, or None."""
        return self._latest.get(device_id)

    def published_unix(self) -> dict[str, float]:
        """When each device's latest prompt was created (Unix seconds); safe from any thread."""
        latest = dict(self._latest)  # one C-level copy: the event loop may publish meanwhile
        return {d: p.created_unix_ms / 1000 for d, p in latest.items()}

    def restore(self, device_id: str, prompt: cdca_pb2.Prompt) -> None:
        """Put back a prompt found on disk at start-up (no one is waiting yet)."""
        self._latest[device_id] = prompt

    def forget(self, device_id: str) -> None:
        """Drop the device's prompt (it was revoked with everything it contributed)."""
        self._latest.pop(device_id, None)

    async def publish(self, device_id: str, prompt: cdca_pb2.Prompt) -> None:
        """Make ``prompt`` the device's latest and wake its watchers."""
        self._latest[device_id] = prompt
        self._wake()

    async def wait_newer(
        self, device_id: str, known_version: int, timeout: float
    ) -> cdca_pb2.Prompt | None:
        """The device's prompt once its version exceeds ``known_version``; None on timeout/close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._closed:
            prompt = self._latest.get(device_id)
            if prompt is not None and prompt.version > known_version:
                return prompt
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._published.wait(), remaining)
            except TimeoutError:
                return None
        return None

    async def close(self) -> None:
        """Release every waiter (server shutdown)."""
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        """True after ``close``."""
        return self._closed

    def _wake(self) -> None:
        published, self._published = self._published, asyncio.Event()
        published.set()  # wakes everyone waiting on the old event; new waiters get the new one
