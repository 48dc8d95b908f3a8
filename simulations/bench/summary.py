"""``cdca bench summary``: several ``cdca bench adapt`` runs as one page, a row per stream.

Each run folder holds ``results.json`` and the ``config.toml`` it ran with. Runs of the
same stream (kind, severity, images per domain) share a row; a method is named by the
``[adaptation]`` settings its run changed from the project's, so the same method run with
two settings gets two columns (``uvpa`` and ``uvpa (adaptation.session.min_uploads=6)``).
Methods that upload nothing (Source aside) are the on-device ones the page compares with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.config.loader import to_flat
from protocol.config.project import ProjectConfig, load_project
from protocol.errors import ConfigError, DataError

__all__ = ["Cell", "StreamRow", "collect", "plot_summary", "summary_json", "summary_markdown"]

CLOUD_SETTINGS = "adaptation."  # the settings a cloud-device row reads from the project


@dataclass(frozen=True)
class Cell:
    """One method on one stream.

    Its mean (and spread over orders), bytes per 1k frames and the cloud's wall time per
    uploaded frame (0 without a cloud).
    """

    mean: float
    std: float
    orders: int
    up_kb: float
    down_kb: float
    cloud_ms: float


@dataclass
class StreamRow:
    """Every method run on one stream."""

    label: str
    runs: list[str] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)


def collect(
    folders: list[Path], reference: ProjectConfig, methods: list[str] | None = None
) -> list[StreamRow]:
    """Read every run, keeping only ``methods`` (in that order) when given.

    A method twice on one stream with the same settings and different results is refused.
    """
    rows: dict[str, StreamRow] = {}
    reference_settings = to_flat(reference)
    benchmark = None
    for folder in folders:
        payload, settings = _read_run(folder)
        benchmark = benchmark or (payload["config"].get("data"), folder)
        if payload["config"].get("data") != benchmark[0]:
            raise DataError(
                f"{folder} ran on {payload['config'].get('data')}, {benchmark[1]} on "
                f"{benchmark[0]}: put each benchmark on its own page"
            )
        suffix = _settings_suffix(settings, reference_settings)
        label = _stream_label(payload["config"])
        row = rows.setdefault(label, StreamRow(label))
        row.runs.append(str(folder))
        for method, cell in _cells(payload, methods).items():
            name = f"{method} ({suffix})" if suffix and cell.up_kb > 0 else method
            if name in row.cells and row.cells[name] == cell:
                continue  # the same row in two runs (e.g. Source beside each U-VPA setting)
            if name in row.cells:
                raise DataError(
                    f"{name} on {row.label} is in two runs ({folder} and one before it) with "
                    "the same settings and different results: pass only one of them"
                )
            row.cells[name] = cell
    return list(rows.values())


def _read_run(folder: Path) -> tuple[dict[str, Any], ProjectConfig]:
    results, settings = folder / "results.json", folder / "config.toml"
    if not results.is_file() or not settings.is_file():
        raise DataError(
            f"{folder} is not a `cdca bench adapt` run folder (it needs results.json and "
            "config.toml)"
        )
    try:
        payload = json.loads(results.read_text())
        _ = payload["config"]["stream"], payload["results"], payload["summary"]  # fail here
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{results} is not a `cdca bench adapt` result: {err}") from err
    try:
        return payload, load_project(settings)
    except ConfigError as err:
        raise DataError(f"{settings}: {err}") from err


def _settings_suffix(settings: ProjectConfig, theirs: dict[str, Any]) -> str:
    """The run's ``[adaptation]`` settings that differ from the reference project's (flat)."""
    mine = to_flat(settings)
    changed = [
        f"{key}={mine[key]}"
        for key in sorted(mine)
        if key.startswith(CLOUD_SETTINGS) and mine[key] != theirs.get(key)
    ]
    return ", ".join(changed)


def _stream_label(config: dict[str, Any]) -> str:
    kind = str(config["stream"])
    per_domain = f"{int(config['num_per_domain']):,} per corruption"
    if config.get("corruptions", "test") != "test":
        per_domain += f" of {config['corruptions']}"
    if kind == "gradual":
        return f"gradual (severity 1 to 5 to 1), {per_domain}"
    if kind.startswith("random"):
        orders = kind.partition(":")[2] or "1"
        return f"{orders} random orders, severity {config['severity']}, {per_domain}"
    return f"{kind}, severity {config['severity']}, {per_domain}"


def _cells(payload: dict[str, Any], methods: list[str] | None) -> dict[str, Cell]:
    costs: dict[str, list[dict[str, float]]] = {}
    for result in payload["results"]:
        costs.setdefault(result["method"], []).append(result.get("costs", {}))
    summary = payload["summary"]
    cells = {}
    for method in [m for m in methods if m in summary] if methods else list(summary):
        stats = summary[method]
        runs = costs.get(method, [{}])
        cells[method] = Cell(
            mean=100 * stats["mean"],
            std=100 * stats["std"],
            orders=int(stats["streams"]),
            up_kb=_mean(c.get("bytes_up_per_1000", 0.0) for c in runs) / 1e3,
            down_kb=_mean(c.get("bytes_down_per_1000", 0.0) for c in runs) / 1e3,
            cloud_ms=_mean(c.get("cloud_ms_per_upload") or 0.0 for c in runs),
        )
    return cells


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def is_on_device(name: str, cell: Cell) -> bool:
    """Adapts on the device alone: uploads nothing and is not the unadapted Source."""
    return cell.up_kb == 0 and name != "source"


def summary_markdown(rows: list[StreamRow]) -> str:
    """The accuracy table, the lead over the best on-device method, and the bytes."""
    methods = _methods(rows)
    cloud = [m for m in methods if any(r.cells[m].up_kb > 0 for r in rows if m in r.cells)]
    lines = _table_head(["stream", *(f"`{m}`" for m in methods)])
    for row in rows:
        best = max(row.cells.values(), key=lambda c: c.mean).mean
        cells = [_accuracy(row.cells.get(m), best) for m in methods]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines += ["", *_lead_table(rows, cloud), "", *_bytes_table(rows, cloud)]
    return "\n".join(lines) + "\n"


def _methods(rows: list[StreamRow]) -> list[str]:
    """Every method name on the page, in the order the runs first name them."""
    return list(dict.fromkeys(name for row in rows for name in row.cells))


def _table_head(columns: list[str]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def _accuracy(cell: Cell | None, best: float) -> str:
    if cell is None:
        return "–"
    text = f"{cell.mean:.1f}" + (f" ± {cell.std:.1f}" if cell.orders > 1 else "")
    return f"**{text}**" if round(cell.mean, 1) == round(best, 1) else text


def _lead_table(rows: list[StreamRow], cloud: list[str]) -> list[str]:
    lines = [
        "Lead of each cloud-device row over the best on-device method of the same stream (points):",
        "",
        *_table_head(["stream", "best on-device", *(f"`{m}`" for m in cloud)]),
    ]
    for row in rows:
        device = {m: c for m, c in row.cells.items() if is_on_device(m, c)}
        if not device:
            continue
        name, best = max(device.items(), key=lambda item: item[1].mean)
        leads = [_signed(row.cells[m].mean - best.mean) if m in row.cells else "–" for m in cloud]
        lines.append(f"| {row.label} | {name} {best.mean:.1f} | " + " | ".join(leads) + " |")
    return lines


def _signed(points: float) -> str:
    return f"{round(points, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _bytes_table(rows: list[StreamRow], cloud: list[str]) -> list[str]:
    lines = [
        "KB up / down per 1,000 frames, and the cloud's wall time per uploaded frame:",
        "",
        *_table_head(["stream", *(f"`{m}`" for m in cloud)]),
    ]
    for row in rows:
        cells = [_costs(row.cells[m]) if m in row.cells else "–" for m in cloud]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def summary_json(rows: list[StreamRow]) -> dict[str, Any]:
    """The page's numbers, per stream and method, as ``summary.json`` keeps them."""
    return {
        "streams": [
            {
                "stream": row.label,
                "runs": row.runs,
                "methods": {m: asdict(c) for m, c in row.cells.items()},
            }
            for row in rows
        ]
    }


def _costs(cell: Cell) -> str:
    return f"{cell.up_kb:.0f} / {cell.down_kb:.0f} KB, {cell.cloud_ms:.0f} ms"


def plot_summary(rows: list[StreamRow], path: Path) -> None:
    """Grouped bars: one group per stream, one bar per method, the spread over orders as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _methods(rows)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(9, 2.2 * len(rows) + 5), 4.8))
    for i, method in enumerate(methods):
        xs = [j + i * width for j, row in enumerate(rows) if method in row.cells]
        cells = [row.cells[method] for row in rows if method in row.cells]
        ax.bar(xs, [c.mean for c in cells], width, yerr=[c.std for c in cells], label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([row.label.replace(", ", "\n") for row in rows], fontsize=8)
    low = min(c.mean for row in rows for c in row.cells.values())
    ax.set_ylim(max(0.0, low - 3), 100)
    ax.set_ylabel("mean online accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
