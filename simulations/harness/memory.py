"""Peak resident memory of this process and everything it started (Ray workers, servers, devices).

Sampled from ``/proc`` twice a second (Linux); elsewhere it reports nothing rather than guess.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PROC = Path("/proc")


def process_rss_bytes(pid: int) -> int:
    """Resident bytes of one process (0 once it has ended)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")),
        0,
    )


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(process_rss_bytes(pid) for pid in tree)


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.megabytes`` (None where /proc is absent)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-memory")

    @property
    def megabytes(self) -> float | None:
        """Highest total seen, in MiB."""
        return round(self.peak / 2**20, 1) if self.peak else None

    def __enter__(self) -> PeakMemory:
        if PROC.is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            if self._stop.wait(self.interval):
                return
