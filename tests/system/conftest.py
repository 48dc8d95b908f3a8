"""A real cloud server on a loopback port, in a thread of the test process, over a tiny model."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from protocol.messages import call_metadata
from protocol.v1 import cdca_pb2, cdca_pb2_grpc

TOKENS = {"cam-a": "token-a", "cam-b": "token-b"}


@dataclass
class LiveServer:
    """Address, state folder and a stub factory for one running server."""

    address: str
    state_dir: Path
    manifest_sha256: str
    cloud_models: object
    shutdown: object = None

    def stop(self) -> None:
        """Stop the server now (idempotent)."""
        if self.shutdown is not None:
            self.shutdown()
            self.shutdown = None

    def stub(self) -> cdca_pb2_grpc.CloudAdaptationStub:
        return cdca_pb2_grpc.CloudAdaptationStub(grpc.insecure_channel(self.address))

    @staticmethod
    def metadata(device_id: str = "cam-a") -> tuple[tuple[str, str], ...]:
        return call_metadata(device_id, TOKENS[device_id])


def tiny_world(exported, distilled):
    """The tiny exported student as a CloudModels with a fixed random-projection teacher."""
    import torch

    from cloud.export.device_model import DeviceModel
    from cloud.server.models import CloudModels, served_model
    from protocol.config.adaptation import AdaptationConfig, SessionConfig, SyntheticConfig

    student, vectors, info = distilled
    device_model = DeviceModel(student)
    projection = torch.randn(3 * 32 * 32, len(vectors), generator=torch.Generator().manual_seed(0))

    def teacher(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flatten(1) @ projection / 30

    adaptation = AdaptationConfig(
        session=SessionConfig(min_uploads=4), synthetic=SyntheticConfig(count=0)
    )
    return CloudModels(
        device_model,
        vectors,
        info.normalization,
        teacher,
        served_model(exported.model.parent, device_model),
        adaptation,
    )


def start_server(cloud_models, state_dir: Path, **overrides):
    """Run ``run_server`` in a thread; returns (address, stop function)."""
    from cloud.server.registry import DeviceRegistry
    from cloud.server.serve import registry_path, run_server
    from protocol.config.server import ServerConfig

    registry = DeviceRegistry(registry_path(state_dir))
    for device_id, token in TOKENS.items():
        registry.enrol(device_id, token)
    registry.close()
    config = ServerConfig(**{"port": 0, "metrics_port": 0, "state_dir": state_dir, **overrides})
    port_file = state_dir / "port"
    port_file.unlink(missing_ok=True)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(run_server(config, cloud_models, stop, port_file))
        except BaseException as err:  # surfaced by the waiting test below
            failure.append(err)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not port_file.is_file() and not failure and time.monotonic() < deadline:
        time.sleep(0.02)
    if failure:
        raise failure[0]

    def shutdown() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
        assert not thread.is_alive(), "server did not stop"

    return f"127.0.0.1:{port_file.read_text()}", shutdown


def registered_server(exported, distilled, state_dir: Path, **overrides) -> LiveServer:
    """A running server over the tiny cloud models, both test devices registered with its model.

    ``overrides``: ServerConfig fields. Uploads need the registration first.
    """
    cloud_models = tiny_world(exported, distilled)
    address, shutdown = start_server(cloud_models, state_dir, **overrides)
    server = LiveServer(
        address, state_dir, cloud_models.served.manifest.sha256, cloud_models, shutdown
    )
    for device_id in TOKENS:
        server.stub().Register(
            cdca_pb2.RegisterRequest(
                device_id=device_id, protocol_version=1, model_sha256=server.manifest_sha256
            ),
            metadata=server.metadata(device_id),
            timeout=5,
        )
    return server


@pytest.fixture
def live_server(exported, distilled, tmp_path):
    """A fresh server per test (its own state folder), stopped afterwards."""
    server = registered_server(exported, distilled, tmp_path / "state")
    yield server
    server.stop()
