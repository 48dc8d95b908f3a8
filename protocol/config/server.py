"""``[server]``: one ``cdca cloud serve``: where it listens, keeps its state and how much it takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigError


@dataclass(frozen=True)
class TLSConfig:
    """[server.tls]: the server's certificate; ``client_ca`` makes client certificates mandatory.

    Attributes:
        cert: the server certificate (PEM).
        key: its private key (PEM).
        client_ca: require client certificates signed by this CA (PEM); empty: none.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The PEM bytes, with a clear error for a missing file."""
        for path in (self.cert, self.key, self.client_ca):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} not found")
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return self.cert.read_bytes(), self.key.read_bytes(), ca


@dataclass(frozen=True)
class ServerConfig:
    """[server]: the cloud server devices connect to.

    Attributes:
        host: address to listen on (``0.0.0.0`` for every interface).
        port: port to listen on; 0 picks a free one (written to ``--port-file``).
        state_dir: the registry, prompt banks, upload inbox and served model.
        model_dir: serve this exported model folder instead of exporting the student into
            ``state_dir``; empty: export.
        upload_slack: uploads a device may make beyond its budget (a burst at its start).
        max_message_bytes: gRPC message cap in both directions.
        max_devices: enrolment stops here.
        tls: the server's certificate (a ``[server.tls]`` table); none: plain text.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    state_dir: Path = Path("runs/cloud-state")
    model_dir: Path | None = None
    upload_slack: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    max_devices: int = 1024
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError("max_message_bytes below 64 KiB cannot carry one upload chunk")
        if self.upload_slack < 0 or self.max_devices < 1:
            raise ConfigError("upload_slack must be >= 0 and max_devices >= 1")

    @property
    def address(self) -> str:
        """host:port for gRPC."""
        return f"{self.host}:{self.port}"
