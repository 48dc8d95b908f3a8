"""Start, run and stop one cloud server: gRPC (optionally TLS), health checking, the worker.

Start-up order matters for crash safety: the registry and prompt banks load first, then
uploads left in the inbox by a previous run are queued, then the port opens. SIGINT or
SIGTERM stops taking calls, lets the running VPLU update finish and leaves queued uploads
on disk for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud.server.board import PromptBoard
from cloud.server.handlers import add_service
from cloud.server.metrics import METRICS_URL_FILE, Readings, ServerMetrics
from cloud.server.models import CloudModels, load_cloud_models
from cloud.server.registry import DeviceRegistry
from cloud.server.service import CloudAdaptationService
from cloud.server.storage import Inbox
from cloud.server.worker import AdaptationWorker
from protocol.config.project import ProjectConfig, write_resolved
from protocol.config.server import ServerConfig
from protocol.errors import ConfigError
from protocol.files import atomic_write
from protocol.messages import SERVICE_NAME

log = logging.getLogger("cdca.cloud")
SHUTDOWN_GRACE_SECONDS = 5.0


def registry_path(state_dir: Path) -> Path:
    """Where a state folder keeps its SQLite registry."""
    return state_dir / "registry.sqlite"


async def serve(project: ProjectConfig, port_file: Path | None = None) -> None:
    """Run the project's server until SIGINT/SIGTERM."""
    config = project.server
    cloud_models = load_cloud_models(project, config.state_dir, config.model_dir)
    write_resolved(project, config.state_dir, "this server")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_server(config, cloud_models, stop, port_file)


async def run_server(
    config: ServerConfig,
    cloud_models: CloudModels,
    stop: asyncio.Event,
    port_file: Path | None = None,
) -> None:
    """Serve ``cloud_models`` with ``config`` until ``stop`` is set (the testable core of ``serve``)."""
    registry = DeviceRegistry(registry_path(config.state_dir))
    board = PromptBoard()
    inbox = Inbox(config.state_dir / "inbox")
    metrics = ServerMetrics()
    worker = AdaptationWorker(
        cloud_models,
        registry,
        inbox,
        board,
        config.state_dir,
        config.limits,
        config.fit_devices,
        metrics,
    )
    requeued = worker.restore()
    if config.ray_address:
        from cloud.server.ray_workers import RayWorkers

        worker.ray = RayWorkers(cloud_models, worker.fleet, config.ray_workers, config.ray_address)
    metrics.readings = Readings(
        queued_batches=worker.queue.qsize,
        waiting_devices=worker.queue.devices,
        inbox_bytes=lambda: worker.quota.total,
        enrolled_devices=registry.count,
        last_prompt_unix=board.published_unix,
        worker_devices=worker.devices_per_worker,
    )
    metrics_url = _start_metrics(metrics, config)
    server, port, health_servicer = _build_server(
        config, registry, inbox, worker, board, cloud_models
    )
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    worker_task = asyncio.create_task(worker.run())
    log.info(
        "cdca cloud listening on %s:%d (%s, %d devices enrolled, %d uploads re-queued, state %s"
        "; metrics %s; fits in %s on %s)",
        config.host,
        port,
        "TLS" if config.tls else "insecure",
        registry.count(),
        requeued,
        config.state_dir,
        metrics_url or "off",
        str(worker.fleet.vplu.dtype).removeprefix("torch."),
        worker.fleet.vplu.device,
    )
    if port_file is not None:  # tests and scripts start on port 0 and read the real one here
        port_file.write_text(str(port))
    try:
        await stop.wait()
    finally:
        busiest = ", ".join(f"{d} {t:.1f} s" for d, t in worker.queue.busiest())
        log.info(
            "shutting down: %d uploads still queued stay on disk; %d fits rejected by the "
            "prompt guard; worker time: %s",
            worker.queue.qsize(),
            worker.rejected_fits,
            busiest or "none",
        )
        await health_servicer.enter_graceful_shutdown()
        await board.close()
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)
        worker.close()
        metrics.close()
        (config.state_dir / METRICS_URL_FILE).unlink(missing_ok=True)
        registry.close()


def _start_metrics(metrics: ServerMetrics, config: ServerConfig) -> str | None:
    """Open the Prometheus endpoint; its URL also goes into the state folder for ``cloud status``."""
    if config.metrics_port is None:
        return None
    try:
        port = metrics.serve(config.host, config.metrics_port)
    except OSError as err:
        raise ConfigError(
            f"cannot open the metrics endpoint on {config.host}:{config.metrics_port} ({err}): "
            "pick another with --metrics-port, 0 for a free one, or turn it off with "
            "--set server.metrics_port="
        ) from err
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    url = f"http://{host}:{port}/metrics"
    atomic_write(config.state_dir / METRICS_URL_FILE, url.encode())
    return url


def _build_server(config, registry, inbox, worker, board, cloud_models):  # type: ignore[no-untyped-def]
    limit = config.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    service = CloudAdaptationService(
        config,
        cloud_models.adaptation.device,
        registry,
        inbox,
        worker,
        board,
        cloud_models.served,
        cloud_models.running_stats,
    )
    add_service(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = _bind(server, config)
    return server, port, health_servicer


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    if config.tls is None:
        port = server.add_insecure_port(config.address)
    else:
        cert, key, client_ca = config.tls.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        port = server.add_secure_port(config.address, credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on {config.address}: is the port in use?")
    return port
