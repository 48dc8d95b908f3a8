"""Run adaptation methods over streams and collect online accuracy per domain.

Online accuracy: every batch is predicted *before* the method adapts on it, and every
prediction counts, as in CoTTA's protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.data.formats import CorruptedDataset
from simulations.online import MethodMaker, MethodResult, ProgressFn, run_method
from simulations.streams import StreamSpec


def run_benchmark(
    methods: Sequence[str],
    make: MethodMaker,
    dataset: CorruptedDataset,
    streams: Sequence[StreamSpec],
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> list[MethodResult]:
    """Every method on every stream, each built fresh from the same source weights."""
    return [
        run_method(name, make, dataset, stream, seed, progress)
        for stream in streams
        for name in methods
    ]
