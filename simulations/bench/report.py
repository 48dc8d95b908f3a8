"""Write a benchmark's ``results.json``, ``results.md`` and ``accuracy.png`` from one run's results."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from simulations.online import MethodResult


def write_report(
    out_dir: Path, results: list[MethodResult], config: dict[str, object]
) -> dict[str, Path]:
    """Write all three files; returns their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "plot": out_dir / "accuracy.png",
    }
    payload = {
        "config": config,
        "results": [r.to_json() for r in results],
        "summary": summarize(results),
    }
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(markdown_report(results, config))
    plot_accuracy(results, paths["plot"])
    return paths


def summarize(results: list[MethodResult]) -> dict[str, dict[str, float]]:
    """Per method: mean accuracy over streams, its standard deviation and the stream count."""
    by_method: dict[str, list[float]] = defaultdict(list)
    for result in results:
        by_method[result.method].append(result.mean)
    return {
        method: {"mean": float(np.mean(v)), "std": float(np.std(v)), "streams": len(v)}
        for method, v in by_method.items()
    }


def markdown_report(results: list[MethodResult], config: dict[str, object]) -> str:
    """One per-domain table per stream, then a summary over streams when there are several."""
    lines = [
        "# Adaptation benchmark",
        "",
        "Configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()),
        "",
    ]
    lines += ["Online accuracy (%): each batch is predicted before the method adapts on it.", ""]
    by_stream: dict[str, list[MethodResult]] = defaultdict(list)
    for result in results:
        by_stream[result.stream].append(result)
    for stream, rows in by_stream.items():
        lines += [f"## Stream `{stream}`", "", *domain_table(rows), "", *cost_table(rows), ""]
    if len(by_stream) > 1:
        lines += [
            "## Over all streams",
            "",
            "| method | mean accuracy (%) | std | streams |",
            "|---|---|---|---|",
        ]
        for method, stats in summarize(results).items():
            lines.append(
                f"| {method} | {100 * stats['mean']:.1f} | {100 * stats['std']:.1f} | {stats['streams']} |"
            )
        lines.append("")
    lines += settings_lines(results)
    return "\n".join(lines)


def domain_table(rows: list[MethodResult]) -> list[str]:
    """Markdown rows: one per method, one column per domain, the mean last; best mean in bold."""
    domains = rows[0].domains
    best = max(r.mean for r in rows)
    header = "| method | " + " | ".join(_short(d) for d in domains) + " | **mean** | time (s) |"
    lines = [header, "|---" * (len(domains) + 3) + "|"]
    for row in rows:
        cells = " | ".join(f"{100 * row.accuracy[d]:.1f}" for d in domains)
        mean = f"**{100 * row.mean:.1f}**" if row.mean == best else f"{100 * row.mean:.1f}"
        lines.append(f"| {row.method} | {cells} | {mean} | {row.seconds:.0f} |")
    return lines


def cost_table(rows: list[MethodResult]) -> list[str]:
    """What each method cost and how it compares with Source, domain by domain."""
    source = next((r for r in rows if r.method == "source"), None)
    lines = [
        "| method | mean (%) | vs source | domains below source | uploaded (%) "
        "| up (KB / 1k frames) | down (KB / 1k frames) | cloud ms / upload "
        "| device forward / frame | device backward / frame | device memory (MB) |",
        "|---" * 11 + "|",
    ]
    for row in rows:
        gain, worse = "n/a", "n/a"
        if source is not None:
            gain = f"{100 * (row.mean - source.mean):+.1f}"
            worse = str(sum(row.accuracy[d] < source.accuracy[d] for d in row.domains))
        cells = [row.method, f"{100 * row.mean:.1f}", gain, worse, *_cost_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_cells(row: MethodResult) -> list[str]:
    c = row.costs
    cloud_ms = c.get("cloud_ms_per_upload")
    return [
        f"{100 * c.get('upload_fraction', 0.0):.1f}",
        f"{c.get('bytes_up_per_1000', 0.0) / 1e3:.1f}",
        f"{c.get('bytes_down_per_1000', 0.0) / 1e3:.1f}",
        "-" if cloud_ms is None else f"{cloud_ms:.1f}",
        _number(c.get("device_forwards_per_frame")),
        _number(c.get("device_backwards_per_frame")),
        _number(device_memory_mb(c)),
    ]


def device_memory_mb(costs: dict[str, float]) -> float | None:
    """What the method holds on the device: weights and state, plus activations kept for backward."""
    if "device_state_mb" not in costs:
        return None
    return costs["device_state_mb"] + costs.get("device_activations_mb", 0.0)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def settings_lines(results: list[MethodResult]) -> list[str]:
    """One line per method with the hyper-parameters it ran with (first stream's instance)."""
    lines = ["## Method settings", ""]
    first: dict[str, MethodResult] = {}
    for result in results:
        first.setdefault(result.method, result)
    for method, row in first.items():
        if row.hyperparameters:
            text = ", ".join(f"{k}={v}" for k, v in row.hyperparameters.items())
            lines.append(f"- `{method}`: {text}")
    return [*lines, ""] if len(lines) > 2 else []


def _short(domain: str) -> str:
    return (
        domain.replace("_noise", "")
        .replace("_blur", "")
        .replace("_transform", "")
        .replace("_compression", "")
    )


def plot_accuracy(results: list[MethodResult], path: Path) -> None:
    """Per-domain accuracy on the first stream, one line per method, and a spread panel.

    With several streams (random orders) a second panel shows every method's mean on each.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = list(dict.fromkeys(r.stream for r in results))
    first = [r for r in results if r.stream == streams[0]]
    width = max(8, 0.6 * len(first[0].domains) + 3)
    if len(streams) == 1:
        fig, ax = plt.subplots(figsize=(width, 4.5))
    else:
        fig, (ax, spread) = plt.subplots(
            1, 2, figsize=(width + 4, 4.5), gridspec_kw={"width_ratios": [3, 1]}
        )
        _plot_stream_means(spread, results, streams)
    _plot_domains(ax, first)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_domains(ax: Any, rows: list[MethodResult]) -> None:
    domains = rows[0].domains
    for row in rows:
        ax.plot(
            range(len(domains)),
            [100 * row.accuracy[d] for d in domains],
            marker="o",
            label=f"{row.method} ({100 * row.mean:.1f})",
        )
    ax.set_xticks(range(len(domains)), [_short(d) for d in domains], rotation=45, ha="right")
    ax.set_ylabel("online accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Accuracy per domain, stream {rows[0].stream} (mean in legend)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def _plot_stream_means(ax: Any, results: list[MethodResult], streams: list[str]) -> None:
    """Each method's mean on each stream; the y range fits the methods, not 0-100."""
    for method in dict.fromkeys(r.method for r in results):
        means = {r.stream: 100 * r.mean for r in results if r.method == method}
        ax.plot(
            range(len(streams)),
            [means.get(s, float("nan")) for s in streams],
            marker="o",
            label=method,
        )
    ax.set_xticks(range(len(streams)), [s.split("-")[0] for s in streams], rotation=45, ha="right")
    ax.set_ylabel("mean online accuracy (%)")
    ax.set_title("Mean per stream")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
