"""``--project`` and ``--set``: how every cdca command that reads the project file takes it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.config.project import ProjectConfig, load_project

PROJECT_HELP = (
    "project file (default: $CDCA_PROJECT, else ./cdca.toml, else the built-in Fashion-MNIST "
    "project); `cdca init` writes one"
)


def add_project_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--project FILE`` and the repeatable ``--set KEY=VALUE``."""
    group = parser.add_argument_group("project settings (docs/configuration.md)")
    group.add_argument("--project", type=Path, help=PROJECT_HELP)
    group.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set adaptation.device.budget=0.05 (repeatable)",
    )


def project_from_args(
    args: argparse.Namespace,
    flags: Mapping[str, Any] | None = None,
    overlays: Sequence[Path] = (),
) -> ProjectConfig:
    """The project file, ``overlays``, the command's own ``flags`` (dotted keys), then ``--set``.

    A flag's ``Path`` value is taken as the path string it came from.
    """
    texts = {k: str(v) if isinstance(v, Path) else v for k, v in (flags or {}).items()}
    return load_project(
        getattr(args, "project", None),
        overlays=overlays,
        flags=texts,
        assignments=getattr(args, "assignments", ()),
    )
