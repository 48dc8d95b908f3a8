"""``cdca bench adapt``: run adaptation methods over a stream and write JSON, markdown and a plot."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from protocol.errors import ConfigError

DEFAULT_DATA = Path("data/fashion-mnist-c")
DEFAULT_METHODS = "source,bn_adapt,tent,cotta,vdp,uvpa,cloud_teacher"


def main(argv: Sequence[str], prog: str = "cdca bench") -> int:
    """Parse ``argv`` and run one benchmark; returns the exit code."""
    # the parser already imports the method table (``_method_names``), which brings these
    from cloud.adaptation.vplu import NORM_SCOPES, VPLUConfig

    parser = argparse.ArgumentParser(prog=prog, description="Benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    adapt = sub.add_parser(
        "adapt", help="online accuracy of adaptation methods on a shifting stream",
        description="Each method starts from the same student and sees the stream once, "
        "predicting every batch before adapting on it (continual: no reset between domains).",
    )  # fmt: skip
    adapt.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help="[kind:]PATH of a corrupted benchmark (default: %(default)s)",
    )
    adapt.add_argument(
        "--student",
        type=Path,
        default=None,
        help="student checkpoint: a distilled one (all methods) or a label-trained one (on-device "
        "peers only); default: the shipped distilled compact CNN",
    )
    adapt.add_argument(
        "--teacher",
        default="builtin",
        help="cloud teacher for the cloud-device rows (default: builtin)",
    )
    adapt.add_argument(
        "--delay", type=int, default=1,
        help="batches before a prompt learned from batch t reaches the device (default: 1)",
    )  # fmt: skip
    adapt.add_argument(
        "--budget", type=float, default=0.1,
        help="share of frames a device may upload (default: %(default)s)",
    )  # fmt: skip
    adapt.add_argument(
        "--fit-norms", choices=NORM_SCOPES, default=VPLUConfig.fit_norms,
        help="BatchNorms the cloud fits in every U-VPA row: encoder (all but the projector's) "
        "or all (the default before 2026-12-03; older tables in docs/ used it) "
        "(default: %(default)s)",
    )  # fmt: skip
    adapt.add_argument(
        "--methods", default=DEFAULT_METHODS,
        help="comma-separated, from: " + ", ".join(_method_names()) + " (default: %(default)s)",
    )  # fmt: skip
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
        "--num-per-domain", type=int, default=1000, help="images per domain (default: 1000)"
    )
    adapt.add_argument("--batch-size", type=int, default=64, help="device batch size (default: 64)")
    adapt.add_argument(
        "--seed", type=int, default=0, help="torch seed for every method (default: 0)"
    )
    adapt.add_argument("--companion", type=Path, default=None,
                       help="companion checkpoint for uvpa_companion (`cdca train companion`; "
                       "default: the shipped one)")  # fmt: skip
    adapt.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    adapt.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/bench-adapt-<time>)"
    )
    from simulations.bench.system_command import add_parser as add_system

    add_system(sub)
    from simulations.bench.ceiling_command import add_parser as add_ceiling

    add_ceiling(sub)
    _add_perf(sub)
    _add_reliability(sub)
    args = parser.parse_args(argv)
    if args.command in ("system", "ceiling", "perf", "reliability"):
        return int(args.handler(args))
    return _run_adapt(args)


def _method_names() -> list[str]:
    from simulations.methods import list_methods

    return list_methods()


def _run_adapt(args: argparse.Namespace) -> int:
    import torch

    from cloud.data.cli import parse_corruptions
    from cloud.data.formats import open_benchmark
    from cloud.distill.command import DEFAULT_DISTILLED
    from cloud.progress import counted_progress
    from cloud.teacher.companion import COMPANION_CHECKPOINT
    from simulations.bench.adapt import run_benchmark
    from simulations.bench.models import load_bench_models
    from simulations.bench.report import write_report
    from simulations.methods import SYNTHETIC_METHODS, MethodFactory
    from simulations.streams import check_available, parse_stream

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.companion is not None and not args.companion.is_file():
        raise ConfigError(f"no companion checkpoint at {args.companion}; create it with "
                          "`cdca train companion`")  # fmt: skip
    loaded = load_bench_models(args.student or DEFAULT_DISTILLED, args.teacher,
                               args.companion or COMPANION_CHECKPOINT,
                               clean_set=bool(set(methods) & set(SYNTHETIC_METHODS)))  # fmt: skip
    factory = MethodFactory(loaded.model, loaded.world, args.delay, args.budget, args.fit_norms)
    for name in methods:  # fail on a typo before any work is done
        factory.check(name)
    dataset = open_benchmark(args.data)
    corruptions = parse_corruptions(args.corruptions)
    streams = parse_stream(
        args.stream, corruptions, args.severity, args.num_per_domain, args.batch_size
    )
    check_available(dataset, (segment for stream in streams for segment in stream.segments))
    out = args.out or Path("runs") / time.strftime("bench-adapt-%Y%m%d-%H%M%S")
    total = len(methods) * sum(s.num_images() for s in streams)
    with counted_progress("adapting", total, width=32) as advance:
        results = run_benchmark(methods, factory.create, dataset, streams, args.seed, advance)
    config = {
        "data": args.data, **loaded.description, "delay": args.delay, "budget": args.budget,
        "fit_norms": args.fit_norms, "stream": args.stream, "corruptions": args.corruptions,
        "severity": args.severity, "num_per_domain": args.num_per_domain,
        "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
    }  # fmt: skip
    paths = write_report(out, results, config)
    print(paths["markdown"].read_text())  # plain print: a markdown table must not be re-wrapped
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def _add_perf(sub: argparse._SubParsersAction) -> None:
    perf = sub.add_parser(
        "perf", help="device, cloud and communication costs, as ratios measured in one run",
        description="Exports the shipped student (fp32, int8 and a plain graph), then measures "
        "device latency (prompt overhead, int8, onnxruntime vs PyTorch eager, peak memory), "
        "cloud VPLU updates vs buffer size, fleet rounds vs devices, and uplink bytes of "
        "U-VPA vs cloud inference. Writes perf.json, perf.md and perf.png.",
    )  # fmt: skip
    perf.add_argument("--data", default=str(DEFAULT_DATA), help="benchmark (default: %(default)s)")
    perf.add_argument("--devices", default="1,4,16,64", help="fleet sizes for the cloud curve")
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
        "reliability", help="many device clients against one real server: failures, latency, memory",
        description="Starts `cdca cloud serve` on loopback, enrols --clients devices and drives "
        "them from threads (register, upload every --period s within budget, watch prompts) "
        "for --seconds; then runs the fault scenarios (server SIGKILL and restart, device SIGKILL "
        "and restart, a stalled server, an overflowing upload queue, a straggler in a Flower "
        "round) with real processes. Writes reliability.json and reliability.md; exits 1 when "
        "an RPC failed or a fault scenario did not hold.",
    )  # fmt: skip
    load.add_argument("--clients", type=int, default=64, help="concurrent devices (default: 64)")
    load.add_argument("--seconds", type=float, default=60.0, help="how long (default: 60)")
    load.add_argument(
        "--period", type=float, default=1.0, help="seconds between a client's uploads"
    )
    load.add_argument(
        "--out", type=Path, default=Path("runs/bench-reliability"), help="output folder"
    )
    load.add_argument("--faults", default="all",
                      help="comma-separated fault scenarios, 'all' or 'none' (default: all)")  # fmt: skip
    load.add_argument("--data", default="data/fashion-mnist-c",
                      help="prepared benchmark for the Flower straggler scenario")  # fmt: skip
    load.set_defaults(handler=_run_reliability)


def _run_reliability(args: argparse.Namespace) -> int:
    from simulations.bench.faults import SCENARIOS
    from simulations.bench.reliability import LoadConfig, passed, run_faults, run_load, write

    names = _fault_names(args.faults, list(SCENARIOS))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"… {args.clients} clients for {args.seconds:.0f} s", flush=True)
    results: dict[str, object] = {
        "load": run_load(LoadConfig(args.out, args.clients, args.seconds, args.period))
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
