"""``DeviceRegistry``: enrolled devices, their token hashes and counters, in SQLite.

Only a SHA-256 of each token is stored, so a leaked state folder does not leak tokens.
SQLite in WAL mode with one connection guarded by a lock: the server writes a handful of
rows per upload, far below what that serialises.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_IDS = frozenset({"shared"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    last_seen REAL,
    model_sha256 TEXT,
    frames_seen INTEGER NOT NULL DEFAULT 0,
    frames_reported INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    prompt_version INTEGER NOT NULL DEFAULT 0
);
"""


def check_device_id(device_id: str) -> str:
    """Device ids are short, filesystem-safe names; ``shared`` is the shared prompt's."""
    if not DEVICE_ID.match(device_id) or device_id in RESERVED_IDS:
        raise ConfigError(
            f"device id {device_id!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            f"not starting with a symbol, and not {sorted(RESERVED_IDS)}"
        )
    return device_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class DeviceRecord:
    """One row of the registry."""

    device_id: str
    frames_seen: int  # total over device restarts
    frames_reported: int  # the count the device last reported (it restarts at 0 with the device)
    accepted: int
    refused: int
    prompt_version: int
    model_sha256: str | None

    def frames_after(self, reported: int) -> int:
        """Total frames once ``reported`` is counted (a smaller count means the device restarted)."""
        gained = reported - self.frames_reported if reported >= self.frames_reported else reported
        return self.frames_seen + gained


class DeviceRegistry:
    """Enrolment, authentication and per-device counters."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def enrol(self, device_id: str, token: str | None = None) -> str:
        """Add (or re-key) a device; returns its token (a fresh random one unless given)."""
        check_device_id(device_id)
        token = token or secrets.token_hex(32)  # hex: never starts with "-" on a command line
        with self._lock:
            self._db.execute(
                "INSERT INTO devices (device_id, token_sha256, enrolled_at) VALUES (?, ?, ?) "
                "ON CONFLICT(device_id) DO UPDATE SET token_sha256 = excluded.token_sha256",
                (device_id, _digest(token), time.time()),
            )
        return token

    def authenticate(self, device_id: str, token: str) -> bool:
        """True when the device is enrolled and the token matches (constant-time compare)."""
        row = self._one("SELECT token_sha256 FROM devices WHERE device_id = ?", device_id)
        return row is not None and hmac.compare_digest(row[0], _digest(token))

    def is_enrolled(self, device_id: str) -> bool:
        """Whether the id has a row."""
        return self._one("SELECT 1 FROM devices WHERE device_id = ?", device_id) is not None

    def count(self) -> int:
        """Enrolled devices."""
        row = self._one("SELECT COUNT(*) FROM devices")
        return int(row[0]) if row else 0

    def record(self, device_id: str) -> DeviceRecord | None:
        """The device's row, or None."""
        row = self._one(
            "SELECT device_id, frames_seen, frames_reported, accepted, refused, prompt_version, "
            "model_sha256 "
            "FROM devices WHERE device_id = ?",
            device_id,
        )
        return DeviceRecord(*row) if row else None

    def device_ids(self) -> list[str]:
        """Every enrolled id, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT device_id FROM devices ORDER BY device_id").fetchall()
        return [r[0] for r in rows]

    def seen(self, device_id: str, model_sha256: str | None = None) -> None:
        """Stamp the last contact (and the model the device says it runs)."""
        with self._lock:
            self._db.execute(
                "UPDATE devices SET last_seen = ?, model_sha256 = COALESCE(?, model_sha256) "
                "WHERE device_id = ?",
                (time.time(), model_sha256, device_id),
            )

    def count_upload(self, device_id: str, reported: int, accepted: int, refused: int) -> None:
        """Add one upload stream's counts (``reported``: the device's own frame count)."""
        record = self.record(device_id)
        if record is None:
            return
        with self._lock:
            self._db.execute(
                "UPDATE devices SET frames_seen = ?, frames_reported = ?, accepted = accepted + ?, "
                "refused = refused + ?, last_seen = ? WHERE device_id = ?",
                (
                    record.frames_after(reported),
                    reported,
                    accepted,
                    refused,
                    time.time(),
                    device_id,
                ),
            )

    def next_prompt_version(self, device_id: str) -> int:
        """Reserve the device's next prompt version (versions never repeat, even across restarts)."""
        with self._lock:
            self._db.execute(
                "UPDATE devices SET prompt_version = prompt_version + 1 WHERE device_id = ?",
                (device_id,),
            )
            row = self._db.execute(
                "SELECT prompt_version FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _one(self, sql: str, *params: object) -> tuple[Any, ...] | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return tuple(row) if row else None
