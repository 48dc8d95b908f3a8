"""The on-device peers (Source, BN-adapt, Tent) on every device's stream, for comparison."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cloud.data.formats import open_benchmark
from simulations.bench.adapt import run_method
from simulations.bench.models import load_bench_models
from simulations.fleet.scenario import Scenario
from simulations.methods import MethodFactory
from simulations.streams import StreamSpec


def run_peers(
    scenario: Scenario,
    specs: list[StreamSpec],
    student: Path | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[dict[str, object]]]:
    """Per peer, per device: online accuracy per batch and per domain (same streams as U-VPA)."""
    from cloud.distill.command import DEFAULT_DISTILLED

    models = load_bench_models(student or DEFAULT_DISTILLED, scenario.teacher)
    factory = MethodFactory(models.model, None)
    dataset = open_benchmark(scenario.data)
    out: dict[str, list[dict[str, object]]] = {}
    for name in scenario.peers:
        factory.check(name)
        out[name] = []
        for spec in specs:
            tick = (lambda _desc, n: progress(n)) if progress else None
            result = run_method(name, factory.create, dataset, spec, scenario.seed, tick)
            out[name].append({"accuracy": result.accuracy, "mean": result.mean,
                              "batch_accuracy": result.batch_accuracy,
                              "batch_domain": result.batch_domain})  # fmt: skip
    return out
