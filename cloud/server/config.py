"""``ServerConfig``: everything ``cdca cloud serve`` needs, from a TOML file plus CLI overrides.

Example ``cloud.toml`` (every key optional; CLI flags win)::

    host = "0.0.0.0"
    port = 50051
    state_dir = "runs/cloud-state"
    student = "cloud/checkpoints/student_distilled.safetensors"
    teacher = "builtin"
    upload_budget = 0.1
    companion = "cloud/checkpoints/companion_cnn.safetensors"   # optional (uvpa_companion)
    synthetic = 192   # optional (uvpa_synthetic): rendered clean images per update

    [tls]
    cert = "server.crt"
    key = "server.key"
    client_ca = "clients-ca.crt"   # set it to require client certificates
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from cloud.distill.command import DEFAULT_DISTILLED
from protocol.errors import ConfigError


@dataclass(frozen=True)
class TLSConfig:
    """Server certificate and key (PEM); ``client_ca`` makes client certificates mandatory."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The PEM bytes, with a clear error for a missing file."""
        paths = [self.cert, self.key, self.client_ca]
        for path in paths:
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} not found")
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return self.cert.read_bytes(), self.key.read_bytes(), ca


@dataclass(frozen=True)
class ServerConfig:
    """One cloud server.

    Attributes:
        host, port: where to listen (port 0 picks a free port; the server prints it).
        state_dir: registry, prompts, upload inbox and the served model live here.
        student: the distilled student checkpoint the devices run (the cloud's copy).
        teacher: ``builtin``, an open_clip name or ``local-dir:PATH``.
        model_dir: serve this exported model folder instead of exporting into state_dir.
        upload_budget: most uploads accepted per frame a device has seen.
        upload_slack: uploads allowed beyond the budget (bursts at the start of a stream).
        max_message_bytes: gRPC message cap in both directions.
        max_devices: enrolment stops here (bounds memory).
        tls: optional server TLS.
        teacher_checkpoint: for the built-in teacher, weights other than the shipped file.
        min_uploads: uploads of an environment before the cloud's first update for it.
        environment_bank: devices entering an environment any device has left start from
            its prompt (``cloud.adaptation.environments``).
        share_across_devices: unknown environments start from the fleet's shared prompt.
        pool_uploads: uploads made in a remembered environment join the fit of the next
            device there (they stay in the cloud; only prompts go to devices).
        companion: a ``cdca train companion`` checkpoint; the cloud re-normalises it on each
            device's current-environment uploads and adds it to the ensemble target.
        synthetic: clean labelled images the cloud renders like each device's environment
            and adds to every fit (``cloud.adaptation.synthetic``); 0: none. Needs
            Fashion-MNIST's training split on the cloud machine.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    state_dir: Path = Path("runs/cloud-state")
    student: Path = DEFAULT_DISTILLED
    teacher: str = "builtin"
    model_dir: Path | None = None
    upload_budget: float = 0.1
    upload_slack: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    max_devices: int = 1024
    tls: TLSConfig | None = None
    teacher_checkpoint: Path | None = None
    min_uploads: int = 24
    environment_bank: bool = True
    share_across_devices: bool = True
    pool_uploads: bool = False
    companion: Path | None = None
    synthetic: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.upload_budget <= 1:
            raise ConfigError(f"upload_budget must be in (0, 1], got {self.upload_budget}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError("max_message_bytes below 64 KiB cannot carry one upload chunk")
        if self.min_uploads < 2:
            raise ConfigError(f"min_uploads must be >= 2, got {self.min_uploads}")
        if self.synthetic < 0:
            raise ConfigError(f"synthetic must be >= 0 (0: none), got {self.synthetic}")
        if self.upload_slack < 0 or self.max_devices < 1:
            raise ConfigError("upload_slack must be >= 0 and max_devices >= 1")

    @property
    def address(self) -> str:
        """host:port for gRPC."""
        return f"{self.host}:{self.port}"


_PATHS = {"state_dir", "student", "model_dir", "teacher_checkpoint", "companion"}


def load_config(path: Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the TOML file (if any), then the overrides that are not None."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_toml(Path(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown server settings {unknown}; known: {sorted(known)}")
    for key in _PATHS & set(values):
        values[key] = Path(values[key])
    if isinstance(values.get("tls"), dict):
        values["tls"] = _tls(values["tls"])
    try:
        return replace(ServerConfig(), **values)
    except TypeError as err:
        raise ConfigError(f"bad server setting: {err}") from err


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err


def _tls(raw: dict[str, Any]) -> TLSConfig:
    if "cert" not in raw or "key" not in raw:
        raise ConfigError("[tls] needs both cert and key")
    ca = raw.get("client_ca")
    return TLSConfig(Path(raw["cert"]), Path(raw["key"]), Path(ca) if ca else None)
