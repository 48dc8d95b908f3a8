"""The on-device peers (Source, BN-adapt, Tent) on every device's stream, for comparison."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from cloud.data.formats import open_benchmark
from cloud.shipped import distilled_student
from protocol.config.project import ProjectConfig
from simulations.online import run_method
from simulations.peers import create_method
from simulations.peers.student import load_student_model
from simulations.streams import StreamSpec


def run_peers(
    project: ProjectConfig,
    specs: list[StreamSpec],
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[dict[str, object]]]:
    """Per peer, per device: online accuracy per batch and per domain (same streams as U-VPA)."""
    model = load_student_model(distilled_student(project))
    dataset = open_benchmark(project.data.shifted)
    out: dict[str, list[dict[str, object]]] = {}
    make = partial(create_method, model=model)
    tick = (lambda _desc, n: progress(n)) if progress else None
    for name in project.fleet.peers:
        out[name] = []
        for spec in specs:
            result = run_method(name, make, dataset, spec, project.fleet.seed, tick)
            out[name].append(
                {
                    "accuracy": result.accuracy,
                    "mean": result.mean,
                    "batch_accuracy": result.batch_accuracy,
                    "batch_domain": result.batch_domain,
                }
            )
    return out
