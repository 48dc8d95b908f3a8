"""Each device's stream, written once as an .npz every engine reads (processes, Flower nodes).

File format (NumPy only, so a torch-free device process can read it): ``images`` (N, H, W, 3)
uint8, ``labels`` (N,) int64, ``domain`` (N,) int16 index of the frame's segment, whose name is ``domain_names[i]`` (a
gradual stream has several segments per corruption).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.data.corruptions import TEST_CORRUPTIONS
from cloud.data.formats import open_benchmark
from protocol.config.project import ProjectConfig
from protocol.errors import ConfigError
from simulations.streams import (
    GRADUAL_SEVERITIES,
    StreamSpec,
    continual,
    device_streams,
    gradual,
    iterate_batches,
)


def fleet_corruptions(project: ProjectConfig, present: list[str]) -> tuple[str, ...]:
    """``fleet.corruptions``, or the test corruptions ``data.shifted`` holds, in CoTTA's order."""
    if project.fleet.corruptions:
        return project.fleet.corruptions
    found = tuple(c for c in TEST_CORRUPTIONS if c in present)
    if not found:
        raise ConfigError(
            f"{project.data.shifted} holds none of the test corruptions; write "
            "them with `cdca data prepare` or set fleet.corruptions"
        )
    return found


def stream_specs(
    project: ProjectConfig, pool_size: int, corruptions: tuple[str, ...] = TEST_CORRUPTIONS
) -> list[StreamSpec]:
    """Device 0 walks ``corruptions`` in order, the others in seeded orders."""
    fleet = project.fleet
    if fleet.stream == "gradual":
        per_step = max(1, fleet.per_domain // len(GRADUAL_SEVERITIES))
        base = gradual(corruptions, per_step, fleet.batch_size)
    else:
        base = continual(corruptions, fleet.severity, fleet.per_domain, fleet.batch_size)
    return device_streams(base, fleet.devices, pool_size, fleet.seed)


def segment_names(spec: StreamSpec) -> list[str]:
    """The domain name of each segment, in order (what a stream file's ``domain`` indexes)."""
    return [segment.domain for segment in spec.segments]


def write_streams(project: ProjectConfig, folder: Path) -> tuple[list[Path], list[StreamSpec]]:
    """Materialise every device's stream under ``folder`` (rewritten: the settings may differ)."""
    dataset = open_benchmark(project.data.shifted)
    corruptions = fleet_corruptions(project, dataset.corruptions())
    pool = dataset.count(corruptions[0])
    if project.fleet.per_domain > pool:
        raise ConfigError(
            f"fleet.per_domain is {project.fleet.per_domain} but {project.data.shifted} has "
            f"{pool} images per corruption; set fleet.per_domain to {pool} or fewer"
        )
    specs = stream_specs(project, pool, corruptions)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, spec in enumerate(specs):
        path = folder / f"device-{i}.npz"
        paths.append(path)
        batches = list(iterate_batches(dataset, spec))
        # one index per segment, so that replays batch exactly as ``iterate_batches`` does
        # (a gradual stream changes severity within a corruption)
        segment = np.concatenate(
            [np.full(len(b.labels), spec.segments.index(b.segment), np.int16) for b in batches]
        )
        np.savez(
            path,
            images=np.concatenate([b.images for b in batches]),
            labels=np.concatenate([b.labels for b in batches]).astype(np.int64),
            domain=segment,
            domain_names=np.array(segment_names(spec)),
        )
    return paths, specs
