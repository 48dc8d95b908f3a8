"""``cdca train``: train the models the system ships (device student, built-in teacher, companion)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from cloud.students import cli as student_cli
from cloud.teacher import cli as teacher_cli
from cloud.teacher import companion_cli


def main(argv: Sequence[str], prog: str = "cdca train") -> int:
    """Parse ``argv`` and run one training command; returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="Train models on clean source data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    student_cli.add_parser(sub)
    teacher_cli.add_parser(sub)
    companion_cli.add_parser(sub)
    args = parser.parse_args(argv)
    args.command_line = " ".join([prog, *(shlex.quote(a) for a in argv)])  # stored in checkpoints
    return int(args.handler(args))
