"""``ThrottledWarnings``: one log line per device and kind of event every few seconds.

A device that sends thousands of bad calls a second must not turn the server's log into
its disk-filling flood (nor spend the server's time formatting lines): the first refusal of
a kind is logged, then at most one line per ``interval`` seconds that says how many were
left out. The standard library's ``logging`` has no rate limit of its own. Refused callers
can name any device, so the table forgets keys whose window has passed once it holds
``MAX_KEYS``, and starts afresh if they are all recent: it stays bounded whatever ids
arrive (at worst a few lines more are logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

MAX_KEYS = 4096


class ThrottledWarnings:
    """``warn(key, message, *args)``: logged unless the same key was logged within ``interval``."""

    def __init__(
        self,
        log: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.interval, self.clock = log, interval, clock
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: dict[tuple[str, str], int] = {}

    def warn(
        self, device: str, kind: str, message: str, *args: object, level: int = logging.WARNING
    ) -> None:
        """Log ``message % args`` for ``device``'s event of ``kind`` unless one was just logged."""
        key = (device, kind)
        now = self.clock()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        skipped = self._skipped.pop(key, 0)
        if len(self._last) >= MAX_KEYS:
            self._forget_before(now - self.interval)
        if len(self._last) >= MAX_KEYS:  # that many ids within one window: start afresh
            self._last.clear()
            self._skipped.clear()
        self._last[key] = now
        if skipped:
            message += f" ({skipped} more like it in the last {self.interval:g} s not logged)"
        self.log.log(level, message, *args)

    def _forget_before(self, cutoff: float) -> None:
        """Drop keys last logged before ``cutoff`` (their count of left-out lines goes too)."""
        for key in [k for k, at in self._last.items() if at < cutoff]:
            del self._last[key]
            self._skipped.pop(key, None)
