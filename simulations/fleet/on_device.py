"""The on-device peers (``fleet.peers``) on every device's stream, for comparison."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from cloud.data.formats import open_benchmark
from cloud.shipped import distilled_student
from protocol.config.project import ProjectConfig
from simulations.online import run_method
from simulations.peers import PEERS, create_method
from simulations.peers.student import load_student_model, source_images
from simulations.streams import StreamSpec


def run_peers(
    project: ProjectConfig,
    specs: list[StreamSpec],
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[dict[str, object]]]:
    """Per peer, per device: online accuracy per batch and per domain (same streams as U-VPA)."""
    student = distilled_student(project)
    model = load_student_model(student)
    dataset = open_benchmark(project.data.shifted)
    out: dict[str, list[dict[str, object]]] = {}
    needs_source = any(PEERS[name].needs_source for name in project.fleet.peers)
    make = partial(
        create_method, model=model, source=source_images(project, student) if needs_source else None
    )
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
