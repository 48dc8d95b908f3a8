"""``cdca bench uplink``: accuracy against uplink, the cloud-device methods at several upload budgets.

Each cloud-device method (U-VPA, CEMA capped at the budget) runs the same stream once per
budget and upload encoding (``--encodings``: raw pixels, lossless PNG, lossy WebP); the
on-device methods and the every-frame teacher run once and appear as flat lines. Each row
also gives its uplink against sending every frame of the stream in the same encoding.
Writes ``uplink.json``, ``uplink.md`` (a table with bytes up and down per 1,000 frames) and
``uplink.png`` (accuracy against KB up per 1,000 frames, log scale).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cloud.project_cli import add_project_arguments, project_from_args
from protocol.config.project import write_resolved
from protocol.errors import ConfigError
from protocol.images import UploadEncoding
from simulations.online import MethodResult

BUDGET_KEY = "adaptation.device.budget"
Settings = tuple[tuple[str, object], ...]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``uplink`` under ``cdca bench``."""
    uplink = sub.add_parser(
        "uplink",
        help="accuracy against uplink: cloud-device methods at upload budgets",
        description="Runs each --curves method once per upload budget and each --flat method "
        "once, on one continual stream, and writes uplink.json, uplink.md and uplink.png "
        "(accuracy against bytes up per 1,000 frames).",
        epilog="example: cdca bench uplink --budgets 1,5,10 --num-per-domain 300 --jobs 2",
    )
    uplink.add_argument(
        "--budgets",
        default="1,2,5,10,20,50",
        help="upload budgets in %% of frames (default: %(default)s)",
    )
    uplink.add_argument(
        "--curves",
        default="uvpa,cema_budget",
        help="cloud-device methods run at every budget (default: %(default)s)",
    )
    uplink.add_argument(
        "--flat",
        default="bn_adapt,tent,forward_only,roid,cloud_teacher",
        help="methods run once, drawn as lines (default: %(default)s)",
    )
    uplink.add_argument(
        "--encodings",
        default="",
        help="upload encodings the curves run in, e.g. raw,png,webp:75 (default: the "
        "project's [adaptation.device] image_format)",
    )
    uplink.add_argument("--stream", default="continual", help="continual | random:K | gradual")
    uplink.add_argument("--corruptions", default="test", help="test | comma-separated names")
    uplink.add_argument("--severity", type=int, default=5)
    uplink.add_argument(
        "--num-per-domain", type=int, default=1000, help="images per domain (default: 1000)"
    )
    uplink.add_argument("--batch-size", type=int, default=64)
    uplink.add_argument("--delay", type=int, default=1, help="batches before a prompt arrives")
    uplink.add_argument("--seed", type=int, default=0)
    uplink.add_argument("--threads", type=int, default=1, help="torch threads per job")
    uplink.add_argument("--jobs", type=int, default=1, help="runs side by side (processes)")
    uplink.add_argument("--out", type=Path, default=Path("runs/bench-uplink"))
    from simulations.bench.cli import add_peer_setting_argument

    add_peer_setting_argument(uplink)
    add_project_arguments(uplink)
    uplink.set_defaults(handler=run)


def parse_budgets(text: str) -> list[float]:
    """'1,2,5' -> [0.01, 0.02, 0.05]; each in (0, 100]."""
    try:
        budgets = [float(v) / 100 for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError(f"--budgets takes percentages like 1,5,10; got {text!r}") from err
    bad = [b for b in budgets if not 0 < b <= 1]
    if not budgets or bad:
        raise ConfigError(f"--budgets must be percentages in (0, 100], got {text!r}")
    return budgets


def parse_encodings(text: str) -> list[tuple[str, Settings]]:
    """'raw,png,webp:75' -> (label, device settings) per encoding; '' -> the project's own.

    ``raw`` sends float32 statistics (what a cloud without encodings takes); the others float16.
    """
    out: list[tuple[str, Settings]] = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        name, _, quality = item.partition(":")
        if name not in ("raw", "png", "webp") or (quality and name != "webp"):
            raise ConfigError(f"--encodings takes raw, png and webp:QUALITY; got {item!r}")
        if quality and not (quality.isdigit() and 1 <= int(quality) <= 100):
            raise ConfigError(f"--encodings: WebP quality must be 1 to 100, got {item!r}")
        settings: list[tuple[str, object]] = [("adaptation.device.image_format", name)]
        settings.append(
            ("adaptation.device.stats_dtype", "float32" if name == "raw" else "float16")
        )
        if quality:
            settings.append(("adaptation.device.image_quality", int(quality)))
        out.append((item, tuple(settings)))
    return out or [("project", ())]


def every_frame_kb(dataset: Any, stream: Any, encoding: UploadEncoding) -> float:
    """KB per 1,000 frames (bytes per frame) of sending every frame of ``stream`` in ``encoding``.

    Cloud inference needs no batch statistics, so none are counted.
    """
    import numpy as np

    from simulations.bench.cloud_device import every_frame_bytes
    from simulations.streams import iterate_batches

    total = frames = 0
    for batch in iterate_batches(dataset, stream):
        n = len(batch.images)
        total += every_frame_bytes(
            "every-frame", batch.index, batch.images, np.arange(n), frames + n, encoding
        )
        frames += n
    return total / frames


def run(args: argparse.Namespace) -> int:
    """Build the jobs, run them with one progress bar, write and print the table."""
    import torch

    from cloud.data.cli import parse_corruptions
    from cloud.data.formats import open_benchmark
    from cloud.progress import counted_progress
    from simulations.bench.jobs import Bench, Job, factory_for, run_jobs
    from simulations.methods import CLOUD_DEVICE_METHODS, check_method
    from simulations.streams import check_available, parse_stream

    torch.set_num_threads(args.threads)
    budgets = parse_budgets(args.budgets)
    encodings = parse_encodings(args.encodings)
    curves = [m.strip() for m in args.curves.split(",") if m.strip()]
    flat = [m.strip() for m in args.flat.split(",") if m.strip()]
    for name in [*curves, *flat]:
        check_method(name)
    not_cloud = [m for m in curves if m not in CLOUD_DEVICE_METHODS]
    if not_cloud:
        raise ConfigError(f"--curves takes cloud-device methods; {not_cloud} upload nothing")
    project = project_from_args(args)
    write_resolved(project, args.out, "this benchmark")
    from simulations.peers import parse_peer_settings

    peer_settings = Bench.frozen(parse_peer_settings(args.peer_settings))
    bench = Bench(project, args.out, args.delay, args.seed, args.threads, peer_settings)
    factory_for(bench, [*curves, *flat]).check(curves[0])
    dataset = open_benchmark(project.data.shifted)
    corruptions = parse_corruptions(args.corruptions)
    stream = parse_stream(
        args.stream, corruptions, args.severity, args.num_per_domain, args.batch_size
    )[0]
    check_available(dataset, stream.segments)
    planned = [
        (label, Job(m, stream, ((BUDGET_KEY, b), *settings)))
        for label, settings in encodings
        for b in budgets
        for m in curves
    ]
    planned += [("project", Job(m, stream)) for m in flat]
    jobs = [job for _, job in planned]
    every_frame = {
        label: every_frame_kb(dataset, stream, _encoding(project, settings))
        for label, settings in [*encodings, ("project", ())]
    }
    start = time.perf_counter()
    with counted_progress("adapting", len(jobs) * stream.num_images(), width=32) as advance:
        results = run_jobs(bench, jobs, args.jobs, advance)
    rows = []
    for (label, job), result in zip(planned, results, strict=True):
        rows.append(_row(job.method, dict(job.settings).get(BUDGET_KEY), label, result))
        rows[-1]["every_frame_kb_per_1000"] = every_frame[label]
    settings = {
        "stream": stream.name,
        "corruptions": args.corruptions,
        "severity": args.severity,
        "num_per_domain": args.num_per_domain,
        "batch_size": args.batch_size,
        "delay": args.delay,
        "seed": args.seed,
        "jobs": args.jobs,
        "peer_settings": ", ".join(args.peer_settings) or "none",
        "wall_seconds": round(time.perf_counter() - start),
        "settings": str(args.out / "config.toml"),
    }
    write(args.out, rows, settings, [r.to_json() for r in results])
    print((args.out / "uplink.md").read_text())
    print(f"wrote {args.out / 'uplink.json'}, {args.out / 'uplink.md'}, {args.out / 'uplink.png'}")
    return 0


def _encoding(project: Any, settings: Settings) -> UploadEncoding:
    from protocol.config.project import with_settings

    return with_settings(project, dict(settings), "--encodings").adaptation.device.encoding


def _row(method: str, budget: object, encoding: str, result: MethodResult) -> dict[str, Any]:
    costs = result.costs
    return {
        "method": method,
        "budget": budget,
        "encoding": encoding,
        "accuracy": result.mean,
        "uploaded": costs.get("upload_fraction", 0.0),
        "kb_up_per_1000": costs.get("bytes_up_per_1000", 0.0) / 1e3,
        "kb_down_per_1000": costs.get("bytes_down_per_1000", 0.0) / 1e3,
        "seconds": result.seconds,
    }


def write(
    out: Path, rows: list[dict[str, Any]], settings: dict[str, object], raw: list[Any]
) -> None:
    """``uplink.json`` (rows, settings, every run's full result), ``uplink.md``, ``uplink.png``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "rows": rows, "results": raw}
    (out / "uplink.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "uplink.md").write_text(markdown(rows, settings))
    plot(rows, out / "uplink.png")


def markdown(rows: list[dict[str, Any]], settings: dict[str, object]) -> str:
    """One table: every run, curves by budget first, then the flat lines."""
    lines = [
        "# Accuracy against uplink",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        "| method | encoding | budget (%) | uploaded (%) | mean accuracy (%) "
        "| up (KB / 1k frames) | up / every frame, same encoding | down (KB / 1k frames) "
        "| time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=_table_order):
        budget = "-" if row["budget"] is None else f"{100 * row['budget']:g}"
        ratio = row["kb_up_per_1000"] / row["every_frame_kb_per_1000"]
        lines.append(
            f"| {row['method']} | {row['encoding']} | {budget} | {100 * row['uploaded']:.1f} "
            f"| {100 * row['accuracy']:.1f} | {row['kb_up_per_1000']:.1f} | {ratio:.3f} "
            f"| {row['kb_down_per_1000']:.1f} | {row['seconds']:.0f} |"
        )
    return "\n".join([*lines, ""])


def _table_order(row: dict[str, Any]) -> tuple[bool, str, str, float]:
    """Curves by method, encoding and budget, then the flat lines."""
    return (row["budget"] is None, row["method"], row["encoding"], row["budget"] or 0)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against KB up per 1,000 frames: curves with their budgets, flat lines, the teacher."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    curves = sorted({(r["method"], r["encoding"]) for r in rows if r["budget"] is not None})
    for method, encoding in curves:
        points = sorted(
            (
                r
                for r in rows
                if (r["method"], r["encoding"]) == (method, encoding) and r["budget"] is not None
            ),
            key=lambda r: r["budget"],
        )
        xs = [max(r["kb_up_per_1000"], 1e-3) for r in points]
        ys = [100 * r["accuracy"] for r in points]
        label = method if encoding == "project" else f"{method}, {encoding}"
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        for x, y, r in zip(xs, ys, points, strict=True):
            ax.annotate(
                f"{100 * r['budget']:g}%",
                (x, y),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=line.get_color(),
            )
    flat = [r for r in rows if r["budget"] is None]
    styles = ["--", ":", "-.", (0, (5, 1))]
    for k, r in enumerate(flat):
        color = f"C{len(curves) + k}"
        if r["kb_up_per_1000"] > 0:
            ax.plot(
                [r["kb_up_per_1000"]],
                [100 * r["accuracy"]],
                marker="*",
                markersize=12,
                linestyle="none",
                color=color,
                label=f"{r['method']} (every frame, {100 * r['accuracy']:.1f})",
            )
        else:
            ax.axhline(
                100 * r["accuracy"],
                linestyle=styles[k % len(styles)],
                linewidth=1.2,
                color=color,
                label=f"{r['method']} (on device, 0 KB, {100 * r['accuracy']:.1f})",
            )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("uplink: KB per 1,000 frames (log scale)")
    ax.set_ylabel("mean online accuracy (%)")
    ax.set_title("Accuracy against uplink")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
