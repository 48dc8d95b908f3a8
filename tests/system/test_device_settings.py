"""One file configures the fleet: the server hands each device the project's [adaptation.device]."""

from dataclasses import replace

import numpy as np

from device.client import ClientConfig, DeviceClient
from device.link import LinkConfig
from device.runtime import DeviceRuntime
from device.sources import Frames
from protocol.config.adaptation import DeviceSettings
from protocol.config.wire import settings_from_wire
from protocol.v1 import cdca_pb2
from tests.system.conftest import TOKENS, start_server, tiny_world

CLOUDS = DeviceSettings(budget=0.25, score="margin", gate="off", class_balance=False)


def test_register_hands_out_the_projects_device_settings_and_the_device_runs_on_them(
    exported, distilled, tmp_path
):
    cloud_models = tiny_world(exported, distilled)
    cloud_models.adaptation = replace(cloud_models.adaptation, device=CLOUDS)
    address, shutdown = start_server(cloud_models, tmp_path / "state")
    try:
        stub_answer = _register(address, cloud_models.served.manifest.sha256)
        assert settings_from_wire(dict(stub_answer.device_settings)) == (CLOUDS, [])
        assert stub_answer.upload_budget == 0.25
        runtime = DeviceRuntime.load(exported.manifest)
        link = LinkConfig(address, "cam-a", TOKENS["cam-a"], cloud_models.served.manifest.sha256)
        own = DeviceSettings(budget=0.05)  # the device's flags: replaced when it registers
        client = DeviceClient(runtime, ClientConfig(tmp_path / "device", own), link)
        frames = np.random.default_rng(0).integers(0, 255, (4, 16, 32, 32, 3), dtype=np.uint8)
        report = client.run([Frames(batch, None) for batch in frames], None)
    finally:
        shutdown()
    assert client.agent.settings == CLOUDS  # from the first batch: it registered before it
    # the cloud's budget, not its own 5 % (some held back while the cloud was busy)
    assert report.queued + report.held_back == int(0.25 * 64)
    # a restart without the cloud starts from the settings it was last given
    again = DeviceClient(
        DeviceRuntime.load(exported.manifest), ClientConfig(tmp_path / "device", own), None
    )
    assert again.agent.settings == CLOUDS


def _register(address, sha256):
    import grpc

    from protocol.messages import call_metadata
    from protocol.v1 import cdca_pb2_grpc

    stub = cdca_pb2_grpc.CloudAdaptationStub(grpc.insecure_channel(address))
    request = cdca_pb2.RegisterRequest(device_id="cam-b", protocol_version=1, model_sha256=sha256)
    return stub.Register(request, metadata=call_metadata("cam-b", TOKENS["cam-b"]), timeout=5)
