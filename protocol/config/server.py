"""``[server]``: one ``cdca cloud serve``: where it listens, keeps its state and how much it takes."""

from __future__ import annotations

from dataclasses import dataclass, field
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
class LimitsConfig:
    """[server.limits]: what one device may cost the server, whatever it claims.

    A device is not trusted: these hold against what the server can count itself (samples
    it received, bytes on its disk, time), not what the device reports.

    Attributes:
        samples_per_second: uploaded samples one device may add per second, sustained (six
            times a camera's: 30 frames/s at a 10 % budget is 3); beyond, samples are
            refused over budget. Each accepted sample costs the cloud a teacher call, so
            this also bounds what one device can make the cloud do.
        sample_burst: samples one device may upload at once after a quiet spell (a device's
            upload queue catching up after the cloud was away).
        shifts_per_minute: new environments one device may report per minute, sustained;
            more are taken as ordinary uploads.
        shift_burst: new environments one device may report in quick succession.
        max_samples_per_upload: samples in one upload stream.
        max_chunks_per_upload: chunks in one upload stream.
        inbox_bytes_per_device: uploads of one device waiting for the adaptation worker;
            beyond, uploads get RESOURCE_EXHAUSTED with a retry hint.
        inbox_bytes_total: uploads of all devices waiting for the worker.
        token_ttl_days: days a token from ``cdca cloud enrol`` stays valid (0: forever).
    """

    samples_per_second: float = 20.0
    sample_burst: int = 256
    shifts_per_minute: float = 12.0
    shift_burst: int = 6
    max_samples_per_upload: int = 1024
    max_chunks_per_upload: int = 256
    inbox_bytes_per_device: int = 64 * 1024 * 1024
    inbox_bytes_total: int = 1024 * 1024 * 1024
    token_ttl_days: float = 365.0

    def __post_init__(self) -> None:
        rates = (self.samples_per_second, self.shifts_per_minute)
        sizes = (
            self.sample_burst,
            self.shift_burst,
            self.max_samples_per_upload,
            self.max_chunks_per_upload,
            self.inbox_bytes_per_device,
            self.inbox_bytes_total,
        )
        if min(rates) <= 0 or min(sizes) < 1 or self.token_ttl_days < 0:
            raise ConfigError("[server.limits]: rates and sizes must be > 0, token_ttl_days >= 0")


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
        metrics_port: port of the Prometheus endpoint (``/metrics``, on ``host``); 0 picks a
            free one; empty: none. ``cdca cloud status`` reads it.
        ray_address: run the fits on Ray actors: ``local`` (a Ray of this machine, started
            by the server), ``auto`` or ``HOST:PORT`` (a cluster started with ``ray start``);
            empty: in the server's own process.
        ray_workers: Ray actors to fit on (each device stays on one).
        fit_devices: devices one fit pass takes together (one teacher pass, one
            ``VPLU.update_many``), per Ray worker. 1: one device at a time, which keeps
            prompts freshest where a pass costs the same per sample at any size, as on a
            CPU (docs/bench-fleet.md); more pays where larger passes cost less per sample.
        tls: the server's certificate (a ``[server.tls]`` table); none: plain text.
        limits: what one device may cost the server (``[server.limits]``).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    state_dir: Path = Path("runs/cloud-state")
    model_dir: Path | None = None
    upload_slack: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    max_devices: int = 1024
    metrics_port: int | None = 9464
    ray_address: str = ""
    ray_workers: int = 2
    fit_devices: int = 1
    tls: TLSConfig | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError("max_message_bytes below 64 KiB cannot carry one upload chunk")
        if self.upload_slack < 0 or self.max_devices < 1:
            raise ConfigError("upload_slack must be >= 0 and max_devices >= 1")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if self.ray_workers < 1:
            raise ConfigError(f"ray_workers must be >= 1, got {self.ray_workers}")
        if self.fit_devices < 1:
            raise ConfigError(f"fit_devices must be >= 1, got {self.fit_devices}")

    @property
    def address(self) -> str:
        """host:port for gRPC."""
        return f"{self.host}:{self.port}"
