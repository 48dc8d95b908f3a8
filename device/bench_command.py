"""``cdca device bench``: the command line of ``device.bench``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from protocol.errors import CdcaError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bench`` under ``cdca device``."""
    bench = sub.add_parser(
        "bench",
        help="latency, frames/s, memory and accuracy of the device model on this machine",
        description="Runs the device model (fp32 and, when exported, int8) with every execution "
        "provider onnxruntime offers here, at each batch size, with a prompt applied and "
        "without, each model and provider in its own process, and prints latency, frames per "
        "second, the process's peak memory and the accuracy on the labelled sample `cdca "
        "cloud export` writes beside the model. Without --model: the student cdca ships "
        "(Fashion-MNIST's classes), to judge an edge box before you have a cloud.",
        epilog="example: cdca device bench --model runs/device-model --batch-sizes 1,16,64",
    )
    bench.add_argument(
        "--model",
        type=Path,
        help="folder `cdca cloud export` wrote (default: the student shipped with cdca)",
    )
    bench.add_argument(
        "--providers",
        default="",
        help="comma-separated, e.g. cpu,cuda (default: every one installed here)",
    )
    bench.add_argument(
        "--batch-sizes", default="1,64", help="frames per model call (default: %(default)s)"
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="timed seconds per configuration (median; default: %(default)s)",
    )
    bench.add_argument(
        "--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)"
    )
    bench.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Measure, print; 2 with one clear line when the input is wrong."""
    from device.bench import BUNDLED_MODEL, available_providers, format_table, run_bench

    try:
        batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        if not batches or min(batches) < 1 or args.seconds <= 0 or args.threads < 1:
            raise ValueError
    except ValueError:
        print(
            "error: --batch-sizes takes positive integers (e.g. 1,64); --seconds and "
            "--threads must be positive"
        )
        return 2
    try:
        providers = available_providers([p for p in args.providers.split(",") if p.strip()])
        folder = args.model or BUNDLED_MODEL
        folder = folder.parent if folder.is_file() else folder  # a manifest file is fine too
        rows = run_bench(folder, providers, batches, args.seconds, args.threads, _to_stderr)
    except CdcaError as error:
        print(f"error: {error}")
        return 2
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(f"model: {folder}")
        print(format_table(rows))
    return 1 if any(r.error for r in rows) else 0


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # progress stays out of --json output
