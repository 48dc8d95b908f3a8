"""``cdca simulate``: the main job. A fleet of devices in changing worlds, one cloud, one report.

With no arguments: 4 devices, each through its own order of the 15 Fashion-MNIST-C
corruptions at severity 5, the shipped teacher and student, in this process. Output: a run
folder with ``config.json``, ``results.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError
from simulations.fleet.scenario import ENGINES, Scenario, built_in_scenarios, load_scenario

FIRST_BATCHES = 3  # "after a shift": this many batches into every new domain


def build_parser(prog: str) -> argparse.ArgumentParser:
    """Flags override the scenario file, which overrides the built-in default."""
    default = Scenario()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a fleet of devices through shifting worlds with one cloud teaching "
        "them (U-VPA), next to on-device adaptation, and write a report with plots.",
        epilog="Examples:\n  cdca simulate\n  cdca simulate --devices 8 --per-domain 200\n"
        "  cdca simulate --engine flower-sim --devices 100 --per-domain 20\n"
        "  cdca simulate --bank-comparison   # also measure the environment bank\n"
        "  cdca simulate --scenario my-fleet.toml --out runs/my-fleet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", type=Path,
                        help="TOML file with any Scenario field, or a built-in name: "
                        + ", ".join(built_in_scenarios()))  # fmt: skip
    parser.add_argument("--engine", choices=ENGINES, help=f"transport (default {default.engine})")
    parser.add_argument(
        "--devices", type=int, help=f"number of devices (default {default.devices})"
    )
    parser.add_argument("--per-domain", type=int, dest="per_domain",
                        help=f"frames per corruption per device (default {default.per_domain})")  # fmt: skip
    parser.add_argument("--data", help=f"benchmark folder (default {default.data})")
    parser.add_argument("--budget", type=float, help="share of frames a device may upload")
    parser.add_argument("--batches-per-round", type=int, dest="batches_per_round",
                        help="device batches between prompt deliveries (default 1)")  # fmt: skip
    parser.add_argument("--fps", type=float,
                        help="grpc engine: pace each device like a camera, in frames/s (default "
                        "0: as fast as it can; 12 lets a 2-core cloud keep up with 4 devices, "
                        "so results match the in-process engine)")  # fmt: skip
    parser.add_argument("--bank-comparison", dest="compare_bank",
                        action=argparse.BooleanOptionalAction,
                        help="also run U-VPA without the environment bank, to measure what the "
                        "bank brings (one more U-VPA run; default off)")  # fmt: skip
    parser.add_argument(
        "--peers",
        help="comma-separated on-device peers (default source,bn_adapt,tent; '' for none)",
    )
    parser.add_argument("--companion",
                        help="add the cloud's companion teacher (a `cdca train companion` file, e.g. "
                        "cloud/checkpoints/companion_cnn.safetensors) to U-VPA's target")  # fmt: skip
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="the cloud adds N of its clean training images, rendered like each "
                        "device's environment, to every fit (default 64, about twice the "
                        "main job's time; 0: none, e.g. for a student of other classes; "
                        "uvpa_synthetic in `cdca bench adapt` uses 192)")  # fmt: skip
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=Path("runs/simulate"), help="run folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in this process")
    return parser


def main(argv: list[str], prog: str = "cdca simulate") -> int:
    """Entry point of ``cdca simulate``."""
    args = build_parser(prog).parse_args(argv)
    peers = None if args.peers is None else tuple(p for p in args.peers.split(",") if p)
    scenario = load_scenario(
        args.scenario, engine=args.engine, devices=args.devices, per_domain=args.per_domain,
        data=args.data, budget=args.budget, batches_per_round=args.batches_per_round,
        compare_bank=args.compare_bank, peers=peers, seed=args.seed, fps=args.fps,
        companion=args.companion, synthetic=args.synthetic,
    )  # fmt: skip
    if not Path(scenario.data).exists() and ":" not in scenario.data:
        raise ConfigError(f"no benchmark at {scenario.data}; write it with "
                          f"`cdca data prepare --out {scenario.data}`")  # fmt: skip
    if scenario.companion and not Path(scenario.companion).is_file():
        raise ConfigError(f"no companion checkpoint at {scenario.companion}; create it with "
                          "`cdca train companion` or leave --companion out")  # fmt: skip
    # SIGTERM ends the run like Ctrl-C: the engines' finally blocks stop what they started
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = simulate(scenario, args.out, args.threads)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(Path(results["paths"]["report"]).read_text())
    print("wrote " + ", ".join(results["paths"].values()))
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def simulate(scenario: Scenario, out: Path, threads: int = 2) -> dict[str, Any]:
    """Run the scenario; writes the run folder and returns the results."""
    import torch

    from cloud.adaptation.fleet import FleetConfig
    from cloud.progress import bar_columns, progress_display
    from simulations.fleet.cloud_side import fleet_config, load_fleet_world
    from simulations.fleet.engines import run_engine
    from simulations.fleet.memory import PeakMemory
    from simulations.fleet.peers import run_peers
    from simulations.fleet.report import write_run
    from simulations.fleet.streams import write_streams

    torch.set_num_threads(threads)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(scenario.resolved(), indent=2) + "\n")
    # a run exports its own device model: one left by an earlier run may come from another
    # cdca version, whose rounding would make this run differ from a fresh one
    shutil.rmtree(out / "model", ignore_errors=True)
    world = load_fleet_world(
        scenario.student,
        scenario.teacher,
        out,
        scenario.teacher_checkpoint,
        scenario.min_uploads,
        scenario.companion,
        scenario.synthetic,
    )
    streams, specs = write_streams(scenario, out / "streams")
    frames = sum(s.num_images() for s in specs)
    fleet = fleet_config(scenario)
    runs = [("uvpa", fleet, scenario.engine)]
    if scenario.compare_bank:
        runs.append(("uvpa_no_bank", FleetConfig(False, False, False), "inprocess"))
    raw: dict[str, dict[str, object]] = {}
    with PeakMemory() as memory, progress_display(*bar_columns()) as bar:
        for name, config, engine in runs:
            task = bar.add_task(f"{name} ({engine})", total=frames)
            raw[name] = run_engine(engine, scenario, streams, world, config, out,
                                   _advance(bar, task))  # fmt: skip
        task = bar.add_task("on-device peers", total=frames * len(scenario.peers))
        student = Path(scenario.student) if scenario.student else None
        peers = run_peers(scenario, specs, student, lambda n: bar.update(task, advance=n))
    results = assemble(scenario, specs, raw, peers)
    results["wall_seconds"] = time.perf_counter() - started
    results["peak_memory_mb"] = memory.megabytes  # this process and every process it started
    paths = write_run(out, results)
    results["paths"] = {k: str(p) for k, p in paths.items()}
    return results


def _advance(bar: Any, task: Any) -> Callable[[int], None]:
    """A progress callback moving one bar by the frames it is told."""

    def advance(frames: int) -> None:
        bar.update(task, advance=frames)

    return advance


def assemble(scenario, specs, raw, peers) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Per-method, per-device summaries, the fleet table and the domain boundaries."""
    from simulations.fleet.streams import segment_names
    from simulations.fleet.summary import device_summary, fleet_table, peer_after_shift

    devices: dict[str, list[dict[str, object]]] = {}
    for name, peer_rows in peers.items():
        devices[name] = [{**row, "after_shift": peer_after_shift(
            row["batch_domain"], row["batch_accuracy"], FIRST_BATCHES)} for row in peer_rows]  # fmt: skip
    for name, run in raw.items():
        devices[name] = [
            device_summary(records, segment_names(spec), run["bytes_down"][i], FIRST_BATCHES)
            for i, (records, spec) in enumerate(zip(run["records"], specs, strict=True))
        ]
    boundaries = []
    for spec in specs:
        starts, batch = [], 0
        for previous, segment in zip(spec.segments[:-1], spec.segments[1:], strict=True):
            batch += -(-previous.count // spec.batch_size)
            if segment.domain != previous.domain:  # mark corruption changes, not severity steps
                starts.append(batch)
        boundaries.append(starts)
    return {"config": scenario.resolved(), "table": fleet_table(devices), "devices": devices,
            "boundaries": boundaries, "cloud": {k: v["cloud"] for k, v in raw.items()}}  # fmt: skip
