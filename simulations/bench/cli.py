"""``cdca bench adapt``: run adaptation methods over a stream and write JSON, markdown and a plot."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from cloud.project_cli import add_project_arguments, project_from_args
from cloud.shipped import distilled_student
from protocol.config.project import write_resolved
from protocol.errors import ConfigError
from simulations.methods import check_method

DEFAULT_DATA = Path("data/fashion-mnist-c")
DEFAULT_PER_DOMAIN = 1000
DEFAULT_METHODS = (
    "source,bn_adapt,forward_only,tent,eata,sar,rotta,roid,cotta,vdp,uvpa,cema,cloud_teacher"
)
SOURCE_IMAGES = (
    2000  # clean images EATA's Fisher and the forward-only statistics read (EATA's count)
)


def main(argv: Sequence[str], prog: str = "cdca bench") -> int:
    """Parse ``argv`` and run one benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="Benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_adapt(sub)
    from simulations.bench.system_command import add_parser as add_system

    add_system(sub)
    from simulations.bench.ceiling_command import add_parser as add_ceiling

    add_ceiling(sub)
    from simulations.bench.uplink import add_parser as add_uplink

    add_uplink(sub)
    from simulations.bench.summary_command import add_parser as add_summary

    add_summary(sub)
    _add_perf(sub)
    _add_reliability(sub)
    args = parser.parse_args(argv)
    if args.command in ("system", "ceiling", "uplink", "summary", "perf", "reliability"):
        return int(args.handler(args))
    return _run_adapt(args)


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    from simulations.methods import list_methods

    adapt = sub.add_parser(
        "adapt",
        help="online accuracy of adaptation methods on a shifting stream",
        description="Each method starts from the project's student and sees the stream once, "
        "predicting every batch before adapting on it (continual: no reset between domains). "
        "The U-VPA rows run the exported ONNX device and the cloud of `cdca cloud serve` in "
        "this process, with the project's [adaptation] settings; the stream comes from "
        "data.shifted.",
        epilog="example: cdca bench adapt --methods source,bn_adapt,tent,uvpa --stream random:5",
    )
    adapt.add_argument("--data", help="data.shifted: [kind:]PATH of a corrupted benchmark")
    adapt.add_argument(
        "--student",
        type=Path,
        help="student.checkpoint: a distilled student (every method) or a label-trained one "
        "(on-device peers only)",
    )
    adapt.add_argument("--teacher", help="teacher.model: builtin | open_clip name | local-dir:DIR")
    adapt.add_argument(
        "--teacher-checkpoint", type=Path, help="teacher.checkpoint: the built-in teacher's weights"
    )
    adapt.add_argument(
        "--delay",
        type=int,
        default=1,
        help="batches before a prompt learned from batch t reaches the device (default: 1)",
    )
    adapt.add_argument("--budget", type=float, help="adaptation.device.budget")
    adapt.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated, from: " + ", ".join(list_methods()) + " (default: %(default)s)",
    )
    adapt.add_argument(
        "--stream",
        default="continual",
        help="continual | random:K | gradual (default: %(default)s)",
    )
    adapt.add_argument(
        "--corruptions",
        default="test",
        help="test | comma-separated names, in stream order (default: the 15 test corruptions)",
    )
    adapt.add_argument(
        "--severity", type=int, default=5, help="for continual/random streams (default: 5)"
    )
    adapt.add_argument(
        "--num-per-domain",
        type=int,
        help=f"images per domain (default: {DEFAULT_PER_DOMAIN}, or all the benchmark has if fewer)",
    )
    adapt.add_argument("--batch-size", type=int, default=64, help="device batch size (default: 64)")
    adapt.add_argument(
        "--seed", type=int, default=0, help="torch and device seed for every method (default: 0)"
    )
    adapt.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads per job (default: 2)"
    )
    adapt.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="methods run side by side in worker processes (default: 1, in this process); "
        "with N jobs give each --threads 1 on an N-core machine",
    )
    adapt.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/bench-adapt-<time>)"
    )
    add_peer_setting_argument(adapt)
    add_project_arguments(adapt)


def _run_adapt(args: argparse.Namespace) -> int:
    import torch

    from cloud.data.cli import parse_corruptions
    from cloud.data.formats import open_benchmark
    from cloud.progress import counted_progress
    from simulations.bench.jobs import Bench, Job, factory_for, run_jobs
    from simulations.bench.report import write_report
    from simulations.peers import parse_peer_settings
    from simulations.peers.student import class_names
    from simulations.streams import check_available, parse_stream

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    project = project_from_args(
        args,
        {
            "data.shifted": args.data,
            "student.checkpoint": args.student,
            "teacher.model": args.teacher,
            "teacher.checkpoint": args.teacher_checkpoint,
            "adaptation.device.budget": args.budget,
        },
    )
    for name in methods:  # a typo fails before any model is loaded
        check_method(name)
    out = args.out or Path("runs") / time.strftime("bench-adapt-%Y%m%d-%H%M%S")
    write_resolved(project, out, "this benchmark")
    peer_settings = parse_peer_settings(args.peer_settings)
    bench = Bench(project, out, args.delay, args.seed, args.threads, Bench.frozen(peer_settings))
    factory = factory_for(bench, methods)
    for name in methods:
        factory.check(name)
    dataset = open_benchmark(project.data.shifted)
    corruptions = parse_corruptions(args.corruptions)
    per_domain = args.num_per_domain or min(
        [DEFAULT_PER_DOMAIN, *(dataset.count(c) for c in corruptions if c in dataset.corruptions())]
    )
    streams = parse_stream(args.stream, corruptions, args.severity, per_domain, args.batch_size)
    check_available(dataset, (segment for stream in streams for segment in stream.segments))
    jobs = [Job(name, stream) for stream in streams for name in methods]
    total = sum(job.stream.num_images() for job in jobs)
    start = time.perf_counter()
    with counted_progress("adapting", total, width=32) as advance:
        results = run_jobs(bench, jobs, args.jobs, advance)
    wall_seconds = round(time.perf_counter() - start)
    student = distilled_student(project)
    config = {
        "data": project.data.shifted,
        "student": str(student),
        "teacher": project.teacher.model,
        "delay": args.delay,
        "stream": args.stream,
        "corruptions": args.corruptions,
        "severity": args.severity,
        "num_per_domain": per_domain,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.threads,
        "jobs": args.jobs,
        "peer_settings": ", ".join(args.peer_settings) or "none",
        "wall_seconds": wall_seconds,
        "settings": str(out / "config.toml"),
        "classes": ", ".join(class_names(student)),
    }
    paths = write_report(out, results, config)
    print(paths["markdown"].read_text())  # plain print: a markdown table must not be re-wrapped
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def add_peer_setting_argument(parser: argparse.ArgumentParser) -> None:
    """``--peer-setting METHOD.KEY=VALUE``, repeatable: a peer's hyper-parameter instead of its paper's."""
    parser.add_argument(
        "--peer-setting",
        dest="peer_settings",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a peer's setting instead of its paper's, e.g. forward_only.lr=0.1 or "
        "cema.lr_scale=1 (the CEMA rows share cema.*); repeatable; the run records it",
    )


def _add_perf(sub: argparse._SubParsersAction) -> None:
    perf = sub.add_parser(
        "perf",
        help="device, cloud and communication costs, as ratios measured in one run",
        description="Exports the shipped student (fp32, int8 and a plain graph), then measures "
        "device latency (prompt overhead, int8, onnxruntime vs PyTorch eager, peak memory), "
        "cloud VPLU updates vs buffer size, cloud ms per device update vs fleet size (one at a "
        "time and batched), and uplink bytes of "
        "U-VPA vs cloud inference. Writes perf.json, perf.md and perf.png.",
    )
    perf.add_argument("--data", default=str(DEFAULT_DATA), help="benchmark (default: %(default)s)")
    perf.add_argument(
        "--devices", default="1,4,16,64,256", help="fleet sizes for the cloud cost curve"
    )
    perf.add_argument("--buffers", default="48,96,192,384", help="buffer sizes for the VPLU curve")
    perf.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median)")
    perf.add_argument("--out", type=Path, default=Path("runs/bench-perf"), help="output folder")
    perf.set_defaults(handler=_run_perf)


def _run_perf(args: argparse.Namespace) -> int:
    from simulations.bench.perf import PerfConfig, run_perf

    def sizes(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split(",") if v.strip())

    torch_threads = 2
    import torch

    torch.set_num_threads(torch_threads)
    config = PerfConfig(args.data, args.out, sizes(args.devices), sizes(args.buffers), args.repeats)
    run_perf(config, progress=lambda text: print(f"… {text}", flush=True))
    print((args.out / "perf.md").read_text())
    print(f"wrote {args.out / 'perf.json'}, {args.out / 'perf.md'}, {args.out / 'perf.png'}")
    return 0


def _add_reliability(sub: argparse._SubParsersAction) -> None:
    load = sub.add_parser(
        "reliability",
        help="many device clients against one real server: failures, latency, memory",
        description="Starts `cdca cloud serve` on loopback, enrols --clients devices and drives "
        "them from threads (register, upload every --period s within budget, watch prompts) "
        "for --seconds; then runs the fault scenarios (server SIGKILL and restart, device SIGKILL "
        "and restart, a stalled server, an overflowing upload queue, a straggler in a Flower "
        "round, one hostile device among honest ones) with real processes. Writes "
        "reliability.json and reliability.md; exits 1 when an RPC failed or a fault scenario "
        "did not hold.",
    )
    load.add_argument("--clients", type=int, default=64, help="concurrent devices (default: 64)")
    load.add_argument("--seconds", type=float, default=60.0, help="how long (default: 60)")
    load.add_argument(
        "--period", type=float, default=1.0, help="seconds between a client's uploads"
    )
    load.add_argument(
        "--out", type=Path, default=Path("runs/bench-reliability"), help="output folder"
    )
    load.add_argument(
        "--faults",
        default="all",
        help="comma-separated fault scenarios, 'all' or 'none' (default: all)",
    )
    load.add_argument(
        "--data",
        default="data/fashion-mnist-c",
        help="prepared benchmark for the Flower straggler scenario",
    )
    load.add_argument(
        "--server-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the load run's server, e.g. server.fit_devices=8 (repeatable)",
    )
    load.set_defaults(handler=_run_reliability)


def _run_reliability(args: argparse.Namespace) -> int:
    from simulations.bench.faults import SCENARIOS
    from simulations.bench.reliability import LoadConfig, passed, run_faults, run_load, write

    names = _fault_names(args.faults, list(SCENARIOS))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"… {args.clients} clients for {args.seconds:.0f} s", flush=True)
    results: dict[str, object] = {
        "load": run_load(
            LoadConfig(
                args.out, args.clients, args.seconds, args.period, server_settings=args.server_set
            )
        )
    }
    if names:
        print(f"… fault scenarios: {', '.join(names)}", flush=True)
        results["faults"] = run_faults(args.out, names, args.data)
    write(results, args.out)
    print((args.out / "reliability.md").read_text())
    return 0 if passed(results) else 1


def _fault_names(text: str, known: list[str]) -> list[str]:
    if text == "all":
        return known
    names = [n for n in text.split(",") if n and n != "none"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown fault scenario(s) {unknown}; choose from {known}, 'all' or 'none'"
        )
    return names
