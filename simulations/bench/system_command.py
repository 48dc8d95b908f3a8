"""``cdca bench system``: arguments, the run, and the results (JSON + markdown)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

DEFAULT_CORRUPTIONS = (
    "gaussian_noise,shot_noise,impulse_noise,defocus_blur,fog,contrast,pixelate,jpeg_compression"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``system`` under ``cdca bench``."""
    system = sub.add_parser(
        "system",
        help="a real server and device processes on loopback next to the same streams simulated",
        description="Starts `cdca cloud serve` and one `cdca device run` per device on loopback "
        "(paced by --fps), and runs the same streams in one process. Reports accuracy (source, "
        "device alone, U-VPA simulated, U-VPA over gRPC), device latency with and without a "
        "prompt, and upload / prompt-delivery latency.",
    )
    system.add_argument("--data", default="data/fashion-mnist-c", help="prepared benchmark")
    system.add_argument("--devices", type=int, default=3)
    system.add_argument(
        "--corruptions", default=DEFAULT_CORRUPTIONS, help="stream order of device 0"
    )
    system.add_argument("--per-domain", type=int, default=200, help="frames per corruption")
    system.add_argument("--fps", type=float, default=40.0, help="frames per second per device")
    system.add_argument("--out", type=Path, default=Path("runs/bench-system"))
    system.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, run the system, measure latency, write and print the report."""
    from cloud.data.cli import parse_corruptions
    from simulations.bench.perf import hardware
    from simulations.bench.system import (
        SystemBenchConfig,
        device_latency,
        materialise_streams,
        run_system,
        simulate,
    )

    config = SystemBenchConfig(
        args.data,
        args.out,
        args.devices,
        tuple(parse_corruptions(args.corruptions)),
        args.per_domain,
        fps=args.fps,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"streams: {args.devices} devices x {len(config.corruptions)} corruptions x {args.per_domain} frames"
    )
    streams = materialise_streams(config)
    print("simulating the same streams in one process ...")
    simulated = simulate(streams, config.batch_size, config.out)
    print(
        f"running the system: 1 server + {args.devices} device processes at {args.fps} fps each ..."
    )
    summaries, work = run_system(config, streams)
    latency = device_latency(
        work / "cloud" / "model", work / "device-0" / "prompt.npz", config.batch_size
    )
    shutil.rmtree(work, ignore_errors=True)
    results = {
        "config": {**vars(args), "out": str(args.out), "handler": None},
        "machine": hardware(),
        "devices": [
            {**sim, "uvpa_grpc": s.get("accuracy"), **{k: s.get(k) for k in SUMMARY_KEYS}}
            for sim, s in zip(simulated, summaries, strict=True)
        ],
        "device_latency": latency,
        "seconds": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


SUMMARY_KEYS = (
    "prompts_applied",
    "samples_acked",
    "samples_refused",
    "rpc_errors",
    "upload_ms_p50",
    "upload_ms_p99",
    "prompt_delivery_ms_p50",
    "prompt_delivery_ms_p99",
    "ms_per_frame_p50",
)


def markdown(results: dict) -> str:
    """The report: accuracy per device, then latency."""
    rows = results["devices"]
    settings = {k: v for k, v in results["config"].items() if k not in ("handler", "command")}
    machine = results["machine"]
    lines = [
        "# cdca system benchmark (`cdca bench system`)",
        "",
        f"Written by `cdca bench system --out {settings['out']}` on {results['date']}, "
        f"{machine['cpu']} with {machine['cores']} cores. Settings: `{json.dumps(settings)}`",
        "",
        "| device | source | device alone | U-VPA simulated | U-VPA over gRPC | prompts applied "
        "| uploads accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {i} | {_pct(r['source'])} | {_pct(r['device_alone'])} | {_pct(r['uvpa_simulated'])} | "
            f"{_pct(r['uvpa_grpc'])} | {r['prompts_applied']} | {r['samples_acked']} |"
        )
    mean = {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("source", "device_alone", "uvpa_simulated", "uvpa_grpc")
    }
    lines.append(
        f"| mean | {_pct(mean['source'])} | {_pct(mean['device_alone'])} | {_pct(mean['uvpa_simulated'])} | "
        f"{_pct(mean['uvpa_grpc'])} | | |"
    )
    lat = results["device_latency"]
    lines += ["", "| latency (loopback, this machine) | value |", "|---|---|"]
    for key, value in lat.items():
        lines.append(f"| device {key.replace('_', ' ')} | {value} ms |")
    for key in (
        "upload_ms_p50",
        "upload_ms_p99",
        "prompt_delivery_ms_p50",
        "prompt_delivery_ms_p99",
    ):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            name = key.replace("_ms_", " ms ").replace("_", " ")
            lines.append(f"| {name} (median over devices) | {np.median(values):.2f} ms |")
    lines += ["", f"Wall time {results['seconds']} s.", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
