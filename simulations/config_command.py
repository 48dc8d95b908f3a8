"""``cdca config``: show the settings a command would run with, check a project file, write the reference."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cloud.project_cli import add_project_arguments, project_from_args
from protocol.config.loader import to_toml
from protocol.config.reference import reference_markdown


def main(argv: Sequence[str], prog: str = "cdca config") -> int:
    """Parse ``argv`` and run one config sub-command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The project file every cdca command reads (docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    show = sub.add_parser(
        "show",
        help="print every setting as the commands would use them (resolved TOML)",
        description="Prints the project's settings after every layer (defaults, project file, "
        "scenario, --set) with absolute paths: what a run folder's config.toml records.",
    )
    _add_layers(show)
    show.set_defaults(handler=_show)
    check = sub.add_parser("check", help="check a project file; one line per problem")
    _add_layers(check)
    check.set_defaults(handler=_check)
    reference = sub.add_parser("reference", help="write the reference of every setting (markdown)")
    reference.add_argument("--out", type=Path, help="file to write (default: print it)")
    reference.set_defaults(handler=_reference)
    args = parser.parse_args(argv)
    return int(args.handler(args))


def _add_layers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", help="a scenario file or built-in name over the project")
    add_project_arguments(parser)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from simulations.fleet.scenario import find_scenario

    overlays = [find_scenario(args.scenario)] if args.scenario else []
    return project_from_args(args, overlays=overlays)


def _show(args: argparse.Namespace) -> int:
    from cloud.shipped import with_shipped_checkpoints

    project = with_shipped_checkpoints(_load(args))
    source = str(project.file) if project.file else "none: the built-in Fashion-MNIST project"
    print(to_toml(project, f"project file: {source}"), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    project = _load(args)
    print(f"{project.file or 'the built-in project'}: every setting is valid")
    return 0


def _reference(args: argparse.Namespace) -> int:
    text = reference_markdown()
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0
