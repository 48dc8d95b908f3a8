"""The ``inprocess`` engine: every device and the cloud in this process, stepped in rounds.

A round: each device applies the prompt the cloud sent after the previous round, predicts
its next ``batches_per_round`` batches and uploads; the cloud ingests each upload in
order. The Flower engines run exactly this schedule with messages in between, so results
agree; only the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cloud.server.models import CloudModels
from device.agent import DeviceAgent
from device.replay import BatchRecord, ReplayDevice
from device.runtime import DeviceRuntime
from protocol.config.adaptation import AdaptationConfig
from protocol.config.project import ProjectConfig
from protocol.manifest import MANIFEST_FILE
from simulations.fleet.engine_run import EngineRun
from simulations.harness.simulated_cloud import SimulatedCloud

Progress = Callable[[int], None]  # frames advanced


def replay_devices(
    project: ProjectConfig, adaptation: AdaptationConfig, streams: list[Path], model_dir: Path
) -> list[ReplayDevice]:
    """One torch-free device per stream, each with its own onnxruntime session and seed."""
    devices = []
    for i, path in enumerate(streams):
        runtime = DeviceRuntime.load(model_dir / MANIFEST_FILE, threads=1)
        # each device its own seed, so that devices do not pick in lockstep
        agent = DeviceAgent(runtime, adaptation.device, seed=project.fleet.seed + i)
        devices.append(ReplayDevice(agent, path, project.fleet.batch_size, f"device-{i}"))
    return devices


def run_inprocess(
    project: ProjectConfig,
    streams: list[Path],
    cloud_models: CloudModels,
    adaptation: AdaptationConfig,
    progress: Progress | None = None,
) -> EngineRun:
    """Run the fleet; returns per-device batch records, bytes down and the cloud's counters."""
    devices = replay_devices(project, adaptation, streams, cloud_models.served.folder)
    teacher = SimulatedCloud.build(cloud_models, adaptation)
    records: list[list[BatchRecord]] = [[] for _ in devices]
    bytes_down = [0] * len(devices)
    pending: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    k = project.fleet.batches_per_round
    rounds = -(-max(d.num_batches for d in devices) // k)
    for round_index in range(rounds):
        for i, device in enumerate(devices):
            if i in pending:
                bytes_down[i] += device.apply(*pending.pop(i))
            for batch in range(round_index * k, min((round_index + 1) * k, device.num_batches)):
                record, upload = device.run(batch)
                records[i].append(record)
                if progress:
                    progress(record.frames)
                prompt = teacher.ingest(device.device_id, upload) if upload else None
                if prompt is not None:
                    pending[i] = prompt
    return EngineRun(records, bytes_down, teacher.cloud.stats())
