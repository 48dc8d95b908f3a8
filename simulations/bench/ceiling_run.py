"""One ``cdca bench ceiling`` run: every domain, every fit source, every parameterisation.

Domain by domain, so each domain's images (and the oracle's corrupted clean images, the slow
part) are made once and every parameterisation fits on the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cloud.data.formats import CorruptedDataset
from simulations.bench.ceiling import Parameterisation, PromptCeiling
from simulations.bench.ceiling_data import FitSets

Progress = Callable[[str, int], None]  # (description, steps done)


@dataclass
class CeilingRow:
    """One parameterisation fitted on one source: accuracy per domain and bytes per prompt."""

    parameterisation: str
    fit_on: str
    in_device_graph: bool
    bytes_down: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Mean accuracy over domains."""
        return float(np.mean(list(self.accuracy.values())))

    def best_of_both(self, bn_adapt: dict[str, float]) -> float:
        """Mean over domains of the better of this fit and BN-adapt (a cloud that knew when to stop)."""
        return float(np.mean([max(a, bn_adapt[d]) for d, a in self.accuracy.items()]))


@dataclass
class CeilingResult:
    """BN-adapt per domain, and every (parameterisation, source) row."""

    bn_adapt: dict[str, float] = field(default_factory=dict)
    rows: list[CeilingRow] = field(default_factory=list)

    def to_json(self, config: dict[str, object]) -> dict[str, object]:
        """``ceiling.json``: the configuration, BN-adapt, and every row with its means."""
        return {
            "config": config,
            "bn_adapt": {
                "domains": self.bn_adapt,
                "mean": float(np.mean(list(self.bn_adapt.values()))),
            },
            "rows": [
                {**asdict(r), "mean": r.mean, "best_of_both": r.best_of_both(self.bn_adapt)}
                for r in self.rows
            ],
        }


def measure_ceiling(
    ceiling: PromptCeiling,
    fit_sets: FitSets,
    dataset: CorruptedDataset,
    domains: Sequence[str],
    severity: int,
    num_per_domain: int,
    how: Sequence[Parameterisation],
    sources: Sequence[str],
    progress: Progress | None = None,
) -> CeilingResult:
    """Fit every parameterisation on every source for each domain; score on its later frames."""
    result = CeilingResult()
    rows = {(p.name, s): CeilingRow(p.name, s, p.in_device_graph) for s in sources for p in how}
    result.rows = list(rows.values())
    for domain in domains:
        data = dataset.load(domain, severity, count=num_per_domain)
        scored_x, scored_y = fit_sets.scored(data.images, data.labels)
        result.bn_adapt[domain] = ceiling.accuracy(scored_x, scored_y, ceiling.unadapted())
        for source in sources:
            x, y = fit_sets.build(source, data.images, data.labels, domain, severity)
            for p in how:
                fitted = ceiling.fit(x, y, p)
                row = rows[(p.name, source)]
                row.accuracy[domain] = ceiling.accuracy(scored_x, scored_y, fitted)
                row.bytes_down = fitted.shipped_bytes()
                if progress:
                    progress(f"{domain} · {source} · {p.name}", 1)
    return result
