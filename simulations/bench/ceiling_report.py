"""``ceiling.md`` and ``ceiling.png``: the reach of each parameterisation, per fit source and domain."""

from __future__ import annotations

from pathlib import Path

from simulations.bench.ceiling import PARAMETERISATIONS
from simulations.bench.ceiling_run import CeilingResult, CeilingRow

SOURCE_TITLES = {
    "stream": "the domain's first frames",
    "renderer": "clean images rendered like the domain",
    "oracle": "clean images under the true corruption",
}


def markdown(result: CeilingResult, config: dict[str, object]) -> str:
    """The summary table (mean per parameterisation and source), then one table per source."""
    settings = ", ".join(f"{k}={v}" for k, v in config.items())
    sources = list(dict.fromkeys(r.fit_on for r in result.rows))
    names = list(dict.fromkeys(r.parameterisation for r in result.rows))
    bn = _mean(result.bn_adapt)
    lines = [
        "# Prompt ceiling",
        "",
        f"Configuration: {settings}",
        "",
        "Mean accuracy (%) on each domain's frames after the first `train_count`, with the "
        "device's own batch statistics, after fitting each parameterisation on true labels "
        "of: " + "; ".join(f"**{s}**: {SOURCE_TITLES[s]}" for s in sources) + ". An upper "
        "reference for what a cloud could teach through those parameters, not a method. "
        "*Best of both*: per domain the better of the fit and BN-adapt.",
        "",
        "| parameterisation | in the device graph | KB down per prompt | "
        + " | ".join(f"fit on {s} | best of both" for s in sources)
        + " |",
        "|---|---|---|" + "---|---|" * len(sources),
        f"| BN-adapt (neutral prompt) | yes | 0 | {' | '.join(f'{bn:.1f} | {bn:.1f}' for _ in sources)} |",
    ]
    for name in names:
        rows = {r.fit_on: r for r in result.rows if r.parameterisation == name}
        first = next(iter(rows.values()))
        cells = " | ".join(
            f"{100 * rows[s].mean:.1f} | {100 * rows[s].best_of_both(result.bn_adapt):.1f}"
            for s in sources
        )
        lines.append(
            f"| `{name}`: {PARAMETERISATIONS[name].description} | "
            f"{'yes' if first.in_device_graph else 'no'} | {first.bytes_down / 1024:.1f} | {cells} |"
        )
    for source in sources:
        lines += ["", *_domain_table(result, source, names)]
    return "\n".join(lines) + "\n"


def _domain_table(result: CeilingResult, source: str, names: list[str]) -> list[str]:
    rows = {r.parameterisation: r for r in result.rows if r.fit_on == source}
    lines = [
        f"## Fit on {source} ({SOURCE_TITLES[source]}), per domain",
        "",
        "| domain | BN-adapt | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for domain, bn in result.bn_adapt.items():
        cells = " | ".join(f"{100 * rows[n].accuracy[domain]:.1f}" for n in names)
        lines.append(f"| {domain} | {100 * bn:.1f} | {cells} |")
    means = " | ".join(f"**{100 * rows[n].mean:.1f}**" for n in names)
    lines.append(f"| **mean** | **{_mean(result.bn_adapt):.1f}** | {means} |")
    return lines


def plot(result: CeilingResult, path: Path) -> None:
    """Mean accuracy per parameterisation, one bar per fit source, BN-adapt as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(r.fit_on for r in result.rows))
    names = list(dict.fromkeys(r.parameterisation for r in result.rows))
    height = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    for k, source in enumerate(sources):
        rows: dict[str, CeilingRow] = {
            r.parameterisation: r for r in result.rows if r.fit_on == source
        }
        ys = [i + k * height for i in range(len(names))]
        ax.barh(ys, [100 * rows[n].mean for n in names], height, label=f"fit on {source}")
    ax.axvline(_mean(result.bn_adapt), color="black", linestyle="--", label="BN-adapt")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    low = min([_mean(result.bn_adapt), *(100 * r.mean for r in result.rows)])
    ax.set_xlim(low - 2, 100)
    ax.set_xlabel("mean accuracy on each domain's later frames (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mean(per_domain: dict[str, float]) -> float:
    return 100 * sum(per_domain.values()) / max(1, len(per_domain))
