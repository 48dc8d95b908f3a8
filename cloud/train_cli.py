"""``cdca train``: train the project's models on its labelled images (built-in teacher, label-trained student)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from cloud.students import cli as student_cli
from cloud.teacher import cli as teacher_cli


def main(argv: Sequence[str], prog: str = "cdca train") -> int:
    """Parse ``argv`` and run one training command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the project's models on its clean labelled images "
        "(data.train). The device student is distilled from the teacher with `cdca cloud "
        "distill`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    student_cli.add_parser(sub)
    teacher_cli.add_parser(sub)
    args = parser.parse_args(argv)
    args.command_line = " ".join([prog, *(shlex.quote(a) for a in argv)])  # stored in checkpoints
    return int(args.handler(args))
