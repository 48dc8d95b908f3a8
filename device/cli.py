"""``cdca device``: tools that run on the edge box with only the device extra installed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence

FORBIDDEN_ON_DEVICE = ("torch", "torchvision", "open_clip")


def main(argv: Sequence[str], prog: str = "cdca device") -> int:
    """Parse ``argv`` and run one device sub-command; returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="Device-side tools (no torch needed).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    doctor = sub.add_parser(
        "doctor", help="check this machine can run a cdca device: runtime, providers, no torch"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    from device import bench_command, run_command

    run_command.add_parser(sub)
    bench_command.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return _doctor(as_json=args.json)
    return int(args.handler(args))


def environment_report() -> dict[str, object]:
    """What a device operator needs to know before deploying: versions, providers, cores."""
    import numpy as np

    report: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        import onnxruntime as ort

        report["onnxruntime"] = ort.__version__
        report["execution_providers"] = ort.get_available_providers()
    except ImportError:
        report["onnxruntime"] = None
        report["execution_providers"] = []
    report["torch_loaded"] = any(name in sys.modules for name in FORBIDDEN_ON_DEVICE)
    return report


def _doctor(*, as_json: bool) -> int:
    report = environment_report()
    ok = report["onnxruntime"] is not None and not report["torch_loaded"]
    if as_json:
        print(json.dumps({**report, "ok": ok}, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
        print(
            "ready: onnxruntime found and torch not loaded"
            if ok
            else "NOT READY: install the device extra: pip install 'cdca[device]'"
        )
    return 0 if ok else 1
