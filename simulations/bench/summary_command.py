"""``cdca bench summary``: arguments, and ``summary.md`` / ``summary.json`` / ``summary.png``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloud.project_cli import add_project_arguments, project_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``summary`` under ``cdca bench``."""
    summary = sub.add_parser(
        "summary",
        help="several `cdca bench adapt` runs as one page, a row per stream",
        description="Reads the results.json and config.toml of each `cdca bench adapt` run "
        "folder and writes one table: a row per stream (kind, severity, images per "
        "corruption), a column per method, the lead of every cloud-device method over the "
        "best on-device one, and the bytes each sends. A method run with [adaptation] "
        "settings other than the project's is named by them. Writes summary.md, "
        "summary.json and summary.png.",
        epilog="example: cdca bench summary runs/bench-s5 runs/bench-s3 --out runs/summary",
    )
    summary.add_argument("runs", nargs="+", type=Path, help="`cdca bench adapt` output folders")
    summary.add_argument(
        "--methods",
        help="comma-separated methods to show, in this order (default: every method of every run)",
    )
    summary.add_argument("--out", type=Path, default=Path("runs/bench-summary"))
    add_project_arguments(summary)
    summary.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Collect the runs and write the page."""
    from simulations.bench.summary import collect, plot_summary, summary_json, summary_markdown

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    rows = collect(list(args.runs), project_from_args(args), methods)
    args.out.mkdir(parents=True, exist_ok=True)
    page = summary_markdown(rows)
    (args.out / "summary.md").write_text(page)
    (args.out / "summary.json").write_text(json.dumps(summary_json(rows), indent=2) + "\n")
    plot_summary(rows, args.out / "summary.png")
    print(page)
    print(f"wrote {args.out / 'summary.md'}, summary.json, summary.png")
    return 0
