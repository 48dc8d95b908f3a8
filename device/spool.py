"""What a device keeps on disk so that losing the cloud, or a restart, loses nothing it promised.

``UploadQueue``: a bounded FIFO of serialised upload chunks waiting for the cloud. When it
is full the oldest chunk is dropped (fresh samples describe the current environment best)
and the drop is counted, also across restarts. A chunk leaves the queue only when the
cloud acknowledged it, so a crash between sending and acknowledging re-sends it.

``PromptCache``: the last prompt the device applied, so a restarted device keeps
predicting with it instead of falling back to the unadapted model.

Every write goes to a temporary file that is then renamed, so a crash leaves either the
old file or the new one, never half of one. NumPy and the standard library only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from protocol.errors import ConfigError
from protocol.files import atomic_write

_SUFFIX = ".chunk"


class UploadQueue:
    """Bounded on-disk FIFO of pending uploads.

    Args:
        folder: where chunks live (created if missing); one file per chunk.
        max_items: most chunks kept; the oldest is dropped beyond it.
        max_bytes: most bytes kept; the oldest chunks are dropped beyond it.
    """

    def __init__(
        self, folder: Path, max_items: int = 1000, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ConfigError("UploadQueue needs max_items >= 1 and max_bytes >= 1")
        self.folder, self.max_items, self.max_bytes = Path(folder), max_items, max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.tmp"):  # a crash mid-write: never acknowledged, never sent
            stale.unlink()
        self._counter = self.folder / "dropped"
        self.dropped = int(self._counter.read_text()) if self._counter.is_file() else 0
        existing = self._sequence_numbers()
        self._next = existing[-1] + 1 if existing else 0

    def put(self, payload: bytes) -> int:
        """Queue one chunk; returns its sequence number. Drops the oldest when over a bound."""
        if len(payload) > self.max_bytes:
            raise ConfigError(
                f"a {len(payload)}-byte chunk can never fit a {self.max_bytes}-byte queue"
            )
        seq = self._next
        atomic_write(self._path(seq), payload)
        self._next += 1
        self._enforce_bounds()
        return seq

    def peek(self) -> tuple[int, bytes] | None:
        """The oldest chunk and its sequence number, or None when empty."""
        existing = self._sequence_numbers()
        if not existing:
            return None
        return existing[0], self._path(existing[0]).read_bytes()

    def ack(self, seq: int) -> None:
        """The cloud has the chunk: forget it."""
        self._path(seq).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._sequence_numbers())

    def _enforce_bounds(self) -> None:
        sizes = {}
        for seq in self._sequence_numbers():
            try:
                sizes[seq] = self._path(seq).stat().st_size
            except FileNotFoundError:  # the uploader thread acked it since the listing
                continue
        existing = list(sizes)
        total = sum(sizes.values())
        while existing and (len(existing) > self.max_items or total > self.max_bytes):
            oldest = existing.pop(0)
            total -= sizes[oldest]
            self._path(oldest).unlink(missing_ok=True)
            self.dropped += 1
        atomic_write(self._counter, str(self.dropped).encode())

    def _sequence_numbers(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob(f"*{_SUFFIX}") if p.stem.isdigit())

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}{_SUFFIX}"


class PromptCache:
    """The last applied prompt in one ``.npz`` file (parts by input name, plus its version)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def save(self, version: int, parts: dict[str, np.ndarray]) -> None:
        """Replace the cached prompt atomically."""
        import io

        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"__version__": np.array(version, np.int64), **parts}
        np.savez(buffer, **arrays)
        atomic_write(self.path, buffer.getvalue())

    def load(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """The cached (version, parts); None when there is none or it cannot be read."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                parts = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):
            return None  # unreadable: predicting with the unadapted model beats crashing
        version = int(parts.pop("__version__", np.array(0)))
        return version, parts
