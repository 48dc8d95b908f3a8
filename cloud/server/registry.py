"""``DeviceRegistry``: enrolled devices, their token hashes and counters, in SQLite.

Only a SHA-256 of each token is stored, so a leaked state folder does not leak tokens.
Tokens expire (``expires_at``) and can be revoked; a revoked device marked ``forget`` has
everything it contributed dropped by the running server (``AdaptationWorker``). Counters
saturate at ``MAX_COUNT``: no value a device reports can overflow SQLite's 64-bit integers.
``uploads`` remembers the last batches of each device by content digest, so a batch sent
again (the device never saw the acknowledgement) is acknowledged once, not stored twice.
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
MAX_COUNT = 2**62  # counters saturate here
REMEMBERED_UPLOADS = 64  # per device, for recognising a resent batch

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
CREATE TABLE IF NOT EXISTS uploads (
    device_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (device_id, digest)
);
"""
# Columns added after the first release: added to an older registry when it is opened.
_ADDED_COLUMNS = {
    "expires_at": "REAL",
    "revoked": "INTEGER NOT NULL DEFAULT 0",
    "forget": "INTEGER NOT NULL DEFAULT 0",
}


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


def saturate(value: int) -> int:
    """``value`` clamped to [0, MAX_COUNT]."""
    return max(0, min(int(value), MAX_COUNT))


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
        reported = saturate(reported)
        gained = reported - self.frames_reported if reported >= self.frames_reported else reported
        return saturate(self.frames_seen + gained)


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
            present = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    self._db.execute(f"ALTER TABLE devices ADD COLUMN {column} {kind}")

    def enrol(
        self,
        device_id: str,
        token: str | None = None,
        *,
        ttl_days: float = 0.0,
        max_devices: int | None = None,
    ) -> str:
        """Add (or re-key, which also lifts a revocation) a device; returns its token.

        ``token``: this one instead of a fresh random one; ``ttl_days``: it expires after so
        many days (0: never); ``max_devices``: refuse a new device beyond this many.
        """
        check_device_id(device_id)
        if (
            max_devices is not None
            and not self.is_enrolled(device_id)
            and self.count() >= max_devices
        ):
            raise ConfigError(
                f"this server already has {self.count()} devices, its server.max_devices: "
                "raise it in the project file or revoke a device (`cdca cloud revoke`)"
            )
        token = token or secrets.token_hex(32)  # hex: never starts with "-" on a command line
        expires = time.time() + ttl_days * 86400 if ttl_days > 0 else None
        with self._lock:
            self._db.execute(
                "INSERT INTO devices (device_id, token_sha256, enrolled_at, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
                "token_sha256 = excluded.token_sha256, expires_at = excluded.expires_at, "
                "revoked = 0, forget = 0",
                (device_id, _digest(token), time.time(), expires),
            )
        return token

    def authenticate(self, device_id: str, token: str) -> bool:
        """True when the device is enrolled, not revoked, its token matches and has not expired."""
        row = self._one(
            "SELECT token_sha256, expires_at, revoked FROM devices WHERE device_id = ?", device_id
        )
        if row is None:
            hmac.compare_digest(_digest(""), _digest(token))  # the same work as a known id
            return False
        digest, expires, revoked = row
        fresh = expires is None or time.time() < expires
        return hmac.compare_digest(digest, _digest(token)) and fresh and not revoked

    def is_enrolled(self, device_id: str) -> bool:
        """Whether the id has a row that is not revoked."""
        row = self._one("SELECT revoked FROM devices WHERE device_id = ?", device_id)
        return row is not None and not row[0]

    def revoke(self, device_id: str, forget: bool = False) -> bool:
        """Refuse the device from now on; ``forget``: also drop all it contributed.

        The row stays (its prompt versions must never repeat if it is enrolled again).
        Returns False when there is no such device.
        """
        with self._lock:
            cursor = self._db.execute(
                "UPDATE devices SET revoked = 1, forget = MAX(forget, ?) WHERE device_id = ?",
                (int(forget), device_id),
            )
        return cursor.rowcount > 0

    def revoked_ids(self) -> list[str]:
        """Every revoked id, sorted."""
        return self._ids("revoked = 1")

    def pending_forgets(self) -> list[str]:
        """Revoked devices whose contributions the server has yet to drop."""
        return self._ids("forget = 1")

    def forgotten(self, device_id: str) -> None:
        """The server dropped what ``device_id`` contributed."""
        with self._lock:
            self._db.execute("UPDATE devices SET forget = 2 WHERE device_id = ?", (device_id,))

    def earlier_upload(self, device_id: str, digest: str) -> tuple[int, int] | None:
        """(accepted, refused) of an upload with this content digest, if the device sent it lately."""
        row = self._one(
            "SELECT accepted, refused FROM uploads WHERE device_id = ? AND digest = ?",
            device_id,
            digest,
        )
        return (int(row[0]), int(row[1])) if row else None

    def count(self) -> int:
        """Enrolled devices (revoked ones not counted)."""
        row = self._one("SELECT COUNT(*) FROM devices WHERE revoked = 0")
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
        """Every enrolled id that is not revoked, sorted."""
        return self._ids("revoked = 0")

    def seen(self, device_id: str, model_sha256: str | None = None) -> None:
        """Stamp the last contact (and the model the device says it runs)."""
        with self._lock:
            self._db.execute(
                "UPDATE devices SET last_seen = ?, model_sha256 = COALESCE(?, model_sha256) "
                "WHERE device_id = ?",
                (time.time(), model_sha256, device_id),
            )

    def count_upload(
        self, device_id: str, reported: int, accepted: int, refused: int, digest: str = ""
    ) -> None:
        """Add one upload stream's counts (``reported``: the device's own frame count).

        ``digest``: the upload's content digest, remembered to recognise it if resent.
        """
        record = self.record(device_id)
        if record is None:
            return
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE devices SET frames_seen = ?, frames_reported = ?, accepted = ?, "
                "refused = ?, last_seen = ? WHERE device_id = ?",
                (
                    record.frames_after(reported),
                    saturate(reported),
                    saturate(record.accepted + accepted),
                    saturate(record.refused + refused),
                    now,
                    device_id,
                ),
            )
            if digest:
                self._db.execute(
                    "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                    (device_id, digest, accepted, refused, now),
                )
                self._db.execute(
                    "DELETE FROM uploads WHERE device_id = ? AND digest NOT IN (SELECT digest "
                    "FROM uploads WHERE device_id = ? ORDER BY at DESC LIMIT ?)",
                    (device_id, device_id, REMEMBERED_UPLOADS),
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

    def _ids(self, condition: str) -> list[str]:
        """Device ids whose row meets ``condition`` (a constant of this module, never input)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT device_id FROM devices WHERE {condition} ORDER BY device_id"  # noqa: S608
            ).fetchall()
        return [r[0] for r in rows]

    def _one(self, sql: str, *params: object) -> tuple[Any, ...] | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return tuple(row) if row else None
