"""Crash-safe file writes shared by the cloud's and the device's on-disk state (stdlib only)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old bytes or the new ones, never half of them.

    The bytes go to ``<name>.tmp``, are fsynced, then renamed over ``path`` (atomic on POSIX).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
