"""The ``cdca`` launcher: finds the sub-command's module and imports it only then.

Lazy imports keep ``cdca device ...`` working on an edge box with only the device extra
(no torch), and keep ``cdca --help`` instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from protocol.errors import CdcaError

# group -> (module with `main(argv, prog) -> int`, one-line help, extra that provides it)
GROUPS: dict[str, tuple[str, str, str]] = {
    "init": (
        "simulations.init_command",
        "start a project from a labelled image set: writes cdca.toml",
        "cloud",
    ),
    "config": (
        "simulations.config_command",
        "show, check and document the project's settings",
        "cloud",
    ),
    "data": (
        "cloud.data.cli",
        "prepare the project's shifted benchmark and inspect benchmarks",
        "cloud",
    ),
    "train": (
        "cloud.train_cli",
        "train the built-in CLIP teacher or a label-trained student",
        "cloud",
    ),
    "cloud": (
        "cloud.cli",
        "cloud jobs: teacher prompts, distillation, export, the server",
        "cloud",
    ),
    "simulate": (
        "simulations.fleet.command",
        "the main job: many devices, one cloud, a report with plots",
        "cloud",
    ),
    "bench": (
        "simulations.bench.cli",
        "benchmarks: adaptation methods, prompt ceiling, speed, reliability",
        "cloud",
    ),
    "device": ("device.cli", "device-side tools; needs only the device extra (no torch)", "device"),
}

# Third-party packages that come with an extra; a missing one is a set-up problem, not a bug.
OPTIONAL_DEPENDENCIES = frozenset(
    {
        "torch",
        "torchvision",
        "open_clip",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "grpc",
        "google",
        "flwr",
        "ray",
        "rich",
        "matplotlib",
        "imagecorruptions",
        "skimage",
        "scipy",
        "cv2",
        "safetensors",
        "PIL",
        "numba",
    }
)

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cdca <group> ...``; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Options before the first word belong to `cdca`; everything after it to the group,
    # so that `cdca data --help` reaches the group's parser.
    split = next((i for i, arg in enumerate(args) if not arg.startswith("-")), len(args))
    top = _top_parser()
    known = top.parse_args(args[: split + 1])
    rest = args[split + 1 :]
    _configure_logging(known.verbose)
    if known.group is None:
        top.print_help()
        return EXIT_OK
    module_name, _, extra = GROUPS[known.group]
    try:
        module = importlib.import_module(module_name)
        return int(module.main(rest, prog=f"cdca {known.group}"))
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in OPTIONAL_DEPENDENCIES:
            raise  # a bug in cdca, not a missing extra
        print(
            f"error: `cdca {known.group}` needs the {extra!r} extra ({err.name} is not "
            f"installed). Install it with: pip install 'cdca[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_MISSING_DEPENDENCY
    except CdcaError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdca",
        description="Cloud-device continual adaptation. Run `cdca <command> --help` for details.",
        epilog="commands:\n" + "\n".join(f"  {name:<8} {info[1]}" for name, info in GROUPS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("group", nargs="?", choices=sorted(GROUPS), metavar="command")
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


if __name__ == "__main__":
    sys.exit(main())
