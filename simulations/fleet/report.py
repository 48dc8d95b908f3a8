"""A fleet run's folder: ``results.json``, ``report.md`` and three plots people look at first.

- ``accuracy_over_time.png``: per device, U-VPA's online accuracy (a running mean over
  batches) next to Source and the best on-device peer, with the domain changes marked;
- ``uploads.png``: per device, the share of frames uploaded and the uplink per 1,000 frames;
- ``comparison.png``: fleet mean accuracy per method, and accuracy right after shifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

OURS = "uvpa"
MAX_PLOTTED_DEVICES = 8


def write_run(out: Path, results: dict[str, Any]) -> dict[str, Path]:
    """Write the JSON, the markdown report and the plots; returns their paths."""
    paths = {
        "json": out / "results.json",
        "report": out / "report.md",
        "accuracy": out / "accuracy_over_time.png",
        "uploads": out / "uploads.png",
        "comparison": out / "comparison.png",
    }
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["report"].write_text(markdown(results, paths))
    _plot_accuracy(results, paths["accuracy"])
    _plot_uploads(results, paths["uploads"])
    _plot_comparison(results, paths["comparison"])
    return paths


def best_peer(table: dict[str, dict[str, float]]) -> str | None:
    """The on-device peer with the highest fleet mean (Source does not count)."""
    peers = [m for m in table if m not in ("source",) and not m.startswith(OURS)]
    return max(peers, key=lambda m: table[m]["mean"]) if peers else None


def markdown(results: dict[str, Any], paths: dict[str, Path]) -> str:
    """The report: what ran, the fleet table, per-device rows, the bank's benefit, the plots."""
    fleet, adaptation = results["config"]["fleet"], results["config"]["adaptation"]
    table: dict[str, dict[str, float]] = results["table"]
    lines = [
        "# Fleet simulation",
        "",
        f"Engine `{fleet['engine']}`, {fleet['devices']} devices, {fleet['per_domain']} "
        f"frames per domain each, severity {fleet['severity']}, batch {fleet['batch_size']}, "
        f"upload budget {adaptation['device']['budget']:.0%}; wall time "
        f"{results['wall_seconds']:.0f} s, peak memory {results.get('peak_memory_mb')} MiB "
        f"({results.get('memory_scope', 'all processes')}). Settings: `config.toml`.",
        f"U-VPA's cloud target: {_target(adaptation)}.{_synthetic(adaptation)}",
        _classes(results.get("class_names", [])),
        "",
        "Online accuracy (%), mean over domains, then over devices (± spread over devices).",
        '"After shift": the first batches of every new domain.',
        "",
        "| method | mean accuracy | after shift | uploads | up KB / 1k frames | down KB / 1k frames |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        traffic = (
            "| {:.1%} | {:.1f} | {:.1f} |".format(
                row["upload_fraction"],
                row["bytes_up_per_1000"] / 1000,
                row["bytes_down_per_1000"] / 1000,
            )
            if "upload_fraction" in row
            else "| 0 | 0 | 0 |"
        )
        lines.append(
            f"| {name} | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} | "
            f"{100 * row['after_shift']:.1f} {traffic}"
        )
    lines += [
        "",
        *_verdict(table),
        "",
        "## Per device",
        "",
        "| device | " + " | ".join(table) + " |",
        "|---|" + "---|" * len(table),
    ]
    per_device = results["devices"]
    for i in range(int(fleet["devices"])):
        cells = [f"{100 * per_device[m][i]['mean']:.1f}" for m in table]
        lines.append(f"| device-{i} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Cloud",
        "",
        "```",
        json.dumps(results["cloud"], indent=2),
        "```",
        "",
        "## Plots",
        "",
    ] + [f"![{k}]({p.name})" for k, p in paths.items() if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def _classes(names: list[str]) -> str:
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"Classes ({len(names)}): {shown}." if names else ""


def _target(adaptation: dict[str, Any]) -> str:
    return "teacher and device" if adaptation["vplu"]["target"] == "ensemble" else "teacher"


def _synthetic(adaptation: dict[str, Any]) -> str:
    count = adaptation["synthetic"]["count"]
    if not count:
        return ""
    return f" Every fit adds {count} clean training images rendered like the device's environment."


def _verdict(table: dict[str, dict[str, float]]) -> list[str]:
    if OURS not in table:
        return []
    peer = best_peer(table)
    ours = table[OURS]["mean"]
    out = []
    if "source" in table:
        out.append(f"- U-VPA vs Source: {100 * (ours - table['source']['mean']):+.1f} points.")
    if peer:
        out.append(
            f"- U-VPA vs the best on-device peer ({peer}): "
            f"{100 * (ours - table[peer]['mean']):+.1f} points."
        )
    if "uvpa_no_bank" in table:
        out.append(
            f"- Environment bank, first batches after a shift: "
            f"{100 * table[OURS]['after_shift']:.1f} % with, "
            f"{100 * table['uvpa_no_bank']['after_shift']:.1f} % without."
        )
    return out


def _running_mean(values: list[float], window: int = 4) -> np.ndarray:
    """Trailing mean over the last ``window`` batches (shorter at the start): no look-ahead."""
    sums = np.cumsum(np.concatenate([[0.0], np.asarray(values, dtype=float)]))
    ends = np.arange(1, len(values) + 1)
    begins = np.maximum(0, ends - window)
    return (sums[ends] - sums[begins]) / (ends - begins)


def _plot_accuracy(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices: dict[str, list[dict[str, Any]]] = results["devices"]
    table: dict[str, dict[str, float]] = results["table"]
    shown = [m for m in ("source", best_peer(table), OURS) if m in devices]
    count = min(len(devices[OURS]), MAX_PLOTTED_DEVICES)  # a 100-device fleet: the first 8
    fig, axes = plt.subplots(count, 1, figsize=(11, 2.4 * count), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        for name in shown:
            ax.plot(
                100 * _running_mean(devices[name][i]["batch_accuracy"]),
                label=name,
                lw=1.6 if name == OURS else 1.0,
            )
        for boundary in results["boundaries"][i]:
            ax.axvline(boundary, color="grey", lw=0.5, ls=":")
        ax.set_ylabel(f"device-{i}\nacc. (%)")
        ax.set_ylim(0, 100)
    axes[0, 0].legend(loc="lower left", ncol=len(shown), fontsize=8)
    axes[-1, 0].set_xlabel("batch (dotted: the domain changes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_uploads(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours: list[dict[str, float]] = results["devices"][OURS]
    names = [str(i) for i in range(len(ours))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9, 0.12 * len(ours)), 3))
    left.bar(names, [100 * d["upload_fraction"] for d in ours])
    left.set_ylabel("frames uploaded (%)")
    left.set_xlabel("device")
    right.set_xlabel("device")
    if len(ours) > 16:  # too many names to read: every tenth
        for axis in (left, right):
            axis.set_xticks(range(0, len(ours), 10))
    right.bar(names, [d["bytes_up_per_1000"] / 1000 for d in ours], label="up")
    right.bar(names, [d["bytes_down_per_1000"] / 1000 for d in ours], label="down", alpha=0.7)
    right.set_ylabel("KB per 1,000 frames")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_comparison(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table: dict[str, dict[str, float]] = results["table"]
    names = list(table)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 3.2))
    ax.bar(x - 0.2, [100 * table[n]["mean"] for n in names], 0.4, label="mean")
    ax.bar(x + 0.2, [100 * table[n]["after_shift"] for n in names], 0.4, label="after shift")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("online accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
