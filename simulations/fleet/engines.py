"""Pick the engine that carries uploads and prompts; every engine returns the same record shape."""

from __future__ import annotations

from pathlib import Path

from cloud.server.models import CloudModels
from protocol.config.adaptation import AdaptationConfig
from protocol.config.project import ProjectConfig
from simulations.fleet.engine_run import EngineRun
from simulations.fleet.inprocess import Progress, run_inprocess


def run_engine(
    engine: str,
    project: ProjectConfig,
    streams: list[Path],
    cloud_models: CloudModels,
    adaptation: AdaptationConfig,
    out: Path,
    progress: Progress | None = None,
) -> EngineRun:
    """Run the fleet on ``engine`` with ``adaptation``; per-device records, bytes down, counters."""
    if engine == "inprocess":
        return run_inprocess(project, streams, cloud_models, adaptation, progress)
    if engine == "flower-sim":
        return run_flower_simulation(project, streams, cloud_models, adaptation, progress)
    if engine in ("grpc", "flower"):  # separate processes read the settings from a file
        from dataclasses import replace

        project = replace(project, adaptation=adaptation)
    if engine == "grpc":
        from simulations.fleet.grpc_engine import run_grpc

        return run_grpc(project, streams, cloud_models, out, progress)
    if engine == "flower":
        from simulations.fleet.deployment import run_deployment

        return run_deployment(project, out, progress)
    raise NotImplementedError(f"engine {engine!r} is not wired yet")


def run_flower_simulation(
    project: ProjectConfig,
    streams: list[Path],
    cloud_models: CloudModels,
    adaptation: AdaptationConfig,
    progress: Progress | None = None,
) -> EngineRun:
    """The Flower Simulation Engine (Ray): one virtual SuperNode per device, in this process."""
    import os

    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from device.flower_client import app as client_app
    from simulations.fleet.flower_server import FleetRounds
    from simulations.harness.simulated_cloud import SimulatedCloud

    rounds = FleetRounds(
        project,
        adaptation,
        SimulatedCloud.build(cloud_models, adaptation),
        streams[0].parent,
        cloud_models.served.folder,
        progress,
    )
    outcome: dict[str, EngineRun] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["results"] = rounds.run(grid)

    run_simulation(
        server_app,
        client_app,
        num_supernodes=project.fleet.devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    if "results" not in outcome:
        raise RuntimeError("the Flower simulation ended without results; see the log above")
    return outcome["results"]
