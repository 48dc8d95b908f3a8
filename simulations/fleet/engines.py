"""Pick the engine that carries uploads and prompts; every engine returns the same record shape."""

from __future__ import annotations

from pathlib import Path

from cloud.adaptation.fleet import FleetConfig
from cloud.server.world import CloudWorld
from simulations.fleet.cloud_side import fleet_config
from simulations.fleet.inprocess import Progress, run_inprocess
from simulations.fleet.scenario import Scenario


def run_engine(
    engine: str,
    scenario: Scenario,
    streams: list[Path],
    world: CloudWorld,
    fleet: FleetConfig,
    out: Path,
    progress: Progress | None = None,
) -> dict[str, object]:
    """Run the fleet on ``engine``; per-device batch records, bytes down, cloud counters."""
    if engine == "inprocess":
        return run_inprocess(scenario, streams, world, fleet, progress)
    if engine == "flower-sim":
        return run_flower_simulation(scenario, streams, world, fleet, progress)
    if engine == "grpc":
        from simulations.fleet.grpc_engine import run_grpc

        return run_grpc(scenario, streams, world, fleet, out, progress)
    if engine == "flower":
        from simulations.fleet.deployment import run_deployment

        if fleet != fleet_config(scenario):
            raise ValueError("the flower engine takes its fleet settings from the scenario")
        return run_deployment(scenario, out, progress)
    raise NotImplementedError(f"engine {engine!r} is not wired yet")


def run_flower_simulation(
    scenario: Scenario,
    streams: list[Path],
    world: CloudWorld,
    fleet: FleetConfig,
    progress: Progress | None = None,
) -> dict[str, object]:
    """The Flower Simulation Engine (Ray): one virtual SuperNode per device, in this process."""
    import os

    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from device.flower_client import app as client_app
    from simulations.fleet.cloud_side import FleetTeacher
    from simulations.fleet.flower_server import FleetRounds

    rounds = FleetRounds(scenario, FleetTeacher.build(world, fleet), streams[0].parent,
                         world.served.folder, progress)  # fmt: skip
    outcome: dict[str, dict[str, object]] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["results"] = rounds.run(grid)

    run_simulation(server_app, client_app, num_supernodes=scenario.devices,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})  # fmt: skip
    if "results" not in outcome:
        raise RuntimeError("the Flower simulation ended without results; see the log above")
    return outcome["results"]
