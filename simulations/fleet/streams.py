"""Each device's stream, written once as an .npz every engine reads (processes, Flower nodes).

File format (NumPy only, so a torch-free device process can read it): ``images`` (N, H, W, 3)
uint8, ``labels`` (N,) int64, ``domain`` (N,) int16 index into ``domain_names``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.data.corruptions import TEST_CORRUPTIONS
from cloud.data.formats import open_benchmark
from simulations.fleet.scenario import Scenario
from simulations.streams import StreamSpec, continual, device_streams, iterate_batches


def stream_specs(scenario: Scenario, pool_size: int) -> list[StreamSpec]:
    """Device 0 walks the corruptions in the given order, the others in seeded orders."""
    corruptions = scenario.corruptions or TEST_CORRUPTIONS
    base = continual(corruptions, scenario.severity, scenario.per_domain, scenario.batch_size)
    return device_streams(base, scenario.devices, pool_size, scenario.seed)


def write_streams(scenario: Scenario, folder: Path) -> tuple[list[Path], list[StreamSpec]]:
    """Materialise every device's stream under ``folder`` (rewritten: the scenario may differ)."""
    dataset = open_benchmark(scenario.data)
    corruptions = scenario.corruptions or TEST_CORRUPTIONS
    pool = len(dataset.load(corruptions[0], scenario.severity))
    specs = stream_specs(scenario, pool)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, spec in enumerate(specs):
        path = folder / f"device-{i}.npz"
        paths.append(path)
        names = spec.domains()
        batches = list(iterate_batches(dataset, spec))
        domain = np.concatenate(
            [np.full(len(b.labels), names.index(b.segment.domain), np.int16) for b in batches]
        )
        np.savez(path, images=np.concatenate([b.images for b in batches]),
                 labels=np.concatenate([b.labels for b in batches]).astype(np.int64),
                 domain=domain, domain_names=np.array(names))  # fmt: skip
    return paths, specs
