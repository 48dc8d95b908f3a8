"""``cdca simulate``: the main job. A fleet of devices in changing worlds, one cloud, one report.

With no project file: 4 devices, each through its own order of the 15 Fashion-MNIST-C
corruptions at severity 5, the shipped teacher and student, in this process. Output: a run
folder with ``config.toml`` (the settings it ran with), ``results.json``, ``report.md`` and
plots.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.project_cli import add_project_arguments, project_from_args
from protocol.config.adaptation import SharingConfig
from protocol.config.fleet import ON_DEVICE_PEERS
from protocol.config.loader import to_plain
from protocol.config.project import ProjectConfig, write_resolved
from protocol.errors import ConfigError
from simulations.fleet.preflight import adaptation_warnings
from simulations.fleet.scenario import built_in_scenarios, find_scenario

if TYPE_CHECKING:  # the engines load torch and onnxruntime; `--help` should not wait for them
    from simulations.fleet.engine_run import EngineRun
    from simulations.harness.memory import PeakMemory

FIRST_BATCHES = 3  # "after a shift": this many batches into every new domain
ENGINES = ("inprocess", "grpc", "flower-sim", "flower")


def build_parser(prog: str) -> argparse.ArgumentParser:
    """Flags override the scenario, which overrides the project file."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a fleet of devices through the project's shifted data with one cloud "
        "teaching them (U-VPA), next to on-device adaptation, and write a report with plots. "
        "The fleet is the project's [fleet]; the cloud its [teacher], [student] and "
        "[adaptation]; the streams come from data.shifted.",
        epilog="Examples:\n  cdca simulate\n  cdca simulate --devices 8 --per-domain 200\n"
        "  cdca simulate --engine flower-sim --devices 100 --per-domain 20\n"
        "  cdca simulate --bank-comparison   # also measure the environment bank\n"
        "  cdca simulate --project cdca.toml --scenario quick --out runs/quick\n"
        "  cdca simulate --set adaptation.synthetic.count=0   # any setting, by its key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        help="a TOML file over the project ([fleet], [adaptation], ...), or a "
        "built-in one: " + ", ".join(built_in_scenarios()),
    )
    parser.add_argument("--engine", choices=ENGINES, help="fleet.engine: how messages travel")
    parser.add_argument("--devices", type=int, help="fleet.devices")
    parser.add_argument(
        "--per-domain",
        type=int,
        dest="per_domain",
        help="fleet.per_domain: frames per corruption per device",
    )
    parser.add_argument("--data", help="data.shifted: the prepared benchmark")
    parser.add_argument("--budget", type=float, help="adaptation.device.budget")
    parser.add_argument(
        "--batches-per-round",
        type=int,
        dest="batches_per_round",
        help="fleet.batches_per_round: device batches between prompt deliveries",
    )
    parser.add_argument(
        "--fps",
        type=float,
        help="fleet.fps: grpc engine: pace each device like a camera, in frames/s "
        "(0: as fast as it can; 12 lets a 2-core cloud keep up with 4 devices, "
        "so results match the in-process engine)",
    )
    parser.add_argument(
        "--bank-comparison",
        dest="compare_bank",
        action=argparse.BooleanOptionalAction,
        help="fleet.compare_bank: also run U-VPA without the environment bank, to "
        "measure what the bank brings (one more U-VPA run)",
    )
    parser.add_argument(
        "--peers",
        help=f"fleet.peers: comma-separated on-device peers from {','.join(ON_DEVICE_PEERS)} ('' for none)",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="adaptation.synthetic.count: training images the cloud renders "
        "like each device's environment per fit (0: none; about half the time)",
    )
    parser.add_argument("--seed", type=int, help="fleet.seed")
    parser.add_argument("--out", type=Path, default=Path("runs/simulate"), help="run folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in this process")
    add_project_arguments(parser)
    return parser


def main(argv: list[str], prog: str = "cdca simulate") -> int:
    """Entry point of ``cdca simulate``."""
    args = build_parser(prog).parse_args(argv)
    flags = {
        "fleet.engine": args.engine,
        "fleet.devices": args.devices,
        "fleet.per_domain": args.per_domain,
        "data.shifted": args.data,
        "adaptation.device.budget": args.budget,
        "fleet.batches_per_round": args.batches_per_round,
        "fleet.compare_bank": args.compare_bank,
        "fleet.peers": args.peers,
        "fleet.seed": args.seed,
        "fleet.fps": args.fps,
        "adaptation.synthetic.count": args.synthetic,
    }
    overlays = [find_scenario(args.scenario)] if args.scenario else []
    project = project_from_args(args, flags, overlays)
    shifted = project.data.shifted
    if ":" not in shifted and not Path(shifted).exists():
        raise ConfigError(
            f"no benchmark at {shifted} (data.shifted); write it with `cdca data prepare`"
        )
    for warning in adaptation_warnings(project):
        print(f"warning: {warning}", file=sys.stderr)
    # SIGTERM ends the run like Ctrl-C: the engines' finally blocks stop what they started
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = simulate(project, args.out, args.threads)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(Path(results["paths"]["report"]).read_text())
    print("wrote " + ", ".join(results["paths"].values()))
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def simulate(project: ProjectConfig, out: Path, threads: int = 2) -> dict[str, Any]:
    """Run the project's fleet; writes the run folder and returns the results."""
    import torch

    from cloud.progress import bar_columns, progress_display
    from cloud.server.models import load_cloud_models
    from simulations.fleet.engines import run_engine
    from simulations.fleet.on_device import run_peers
    from simulations.fleet.report import write_run
    from simulations.fleet.stream_files import write_streams
    from simulations.harness.memory import PeakMemory

    torch.set_num_threads(threads)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(project, out, "this simulation")
    # a run exports its own device model: one left by an earlier run may come from another
    # cdca version, whose rounding would make this run differ from a fresh one
    shutil.rmtree(out / "model", ignore_errors=True)
    cloud_models = load_cloud_models(project, out)
    streams, specs = write_streams(project, out / "streams")
    frames = sum(s.num_images() for s in specs)
    runs = [("uvpa", project.adaptation, project.fleet.engine)]
    if project.fleet.compare_bank:
        no_bank = SharingConfig(environment_bank=False, share_across_devices=False)
        runs.append(("uvpa_no_bank", replace(project.adaptation, sharing=no_bank), "inprocess"))
    raw: dict[str, EngineRun] = {}
    with PeakMemory() as memory, progress_display(*bar_columns()) as bar:
        for name, adaptation, engine in runs:
            task = bar.add_task(f"{name} ({engine})", total=frames)
            raw[name] = run_engine(
                engine, project, streams, cloud_models, adaptation, out, _advance(bar, task)
            )
        task = bar.add_task("on-device peers", total=frames * len(project.fleet.peers))
        peers = run_peers(project, specs, lambda n: bar.update(task, advance=n))
    results = assemble(project, specs, raw, peers)
    results["class_names"] = list(cloud_models.served.manifest.class_names)
    results["wall_seconds"] = time.perf_counter() - started
    results["peak_memory_mb"] = memory.megabytes  # this process and every process it started
    paths = write_run(out, results)
    results["paths"] = {k: str(p) for k, p in paths.items()}
    return results


def report_flower_run(  # type: ignore[no-untyped-def]
    project: ProjectConfig,
    specs,
    run: EngineRun,
    out: Path,
    class_names: list[str],
    started: float,
    memory: PeakMemory,
) -> dict[str, Path]:
    """The report ``cdca simulate`` writes, for a run started with ``flwr run``.

    The on-device peers run here on the same streams, as ``cdca simulate`` runs them;
    ``started`` (``time.perf_counter()``) and ``memory`` cover the ServerApp's process.
    """
    from simulations.fleet.on_device import run_peers
    from simulations.fleet.report import write_run

    results = assemble(project, specs, {"uvpa": run}, run_peers(project, specs))
    results["class_names"] = class_names
    results["wall_seconds"] = time.perf_counter() - started
    results["peak_memory_mb"] = memory.megabytes
    results["memory_scope"] = "the ServerApp's processes; the SuperNodes run apart"
    return write_run(out, results)


def _advance(bar: Any, task: Any) -> Callable[[int], None]:
    """A progress callback moving one bar by the frames it is told."""

    def advance(frames: int) -> None:
        bar.update(task, advance=frames)

    return advance


def assemble(project, specs, raw, peers) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Per-method, per-device summaries, the fleet table and the domain boundaries."""
    from simulations.fleet.stream_files import segment_names
    from simulations.fleet.summary import device_summary, fleet_table, peer_after_shift

    devices: dict[str, list[dict[str, object]]] = {}
    for name, peer_rows in peers.items():
        devices[name] = [
            {
                **row,
                "after_shift": peer_after_shift(
                    row["batch_domain"], row["batch_accuracy"], FIRST_BATCHES
                ),
            }
            for row in peer_rows
        ]
    for name, run in raw.items():
        devices[name] = [
            device_summary(records, segment_names(spec), run.bytes_down[i], FIRST_BATCHES)
            for i, (records, spec) in enumerate(zip(run.records, specs, strict=True))
        ]
    boundaries = []
    for spec in specs:
        starts, batch = [], 0
        for previous, segment in zip(spec.segments[:-1], spec.segments[1:], strict=True):
            batch += -(-previous.count // spec.batch_size)
            if segment.domain != previous.domain:  # mark corruption changes, not severity steps
                starts.append(batch)
        boundaries.append(starts)
    return {
        "config": to_plain(project),
        "table": fleet_table(devices),
        "devices": devices,
        "boundaries": boundaries,
        "cloud": {k: v.cloud for k, v in raw.items()},
    }
