"""Run benchmark jobs (one method, one stream, maybe changed settings) in this process or in workers.

``cdca bench adapt`` and ``cdca bench uplink`` describe their runs as ``Job``s; with
``workers > 1`` each job runs in its own process (spawned, one torch thread each, the
cloud's model folder exported once beforehand), and their progress feeds one bar here.
A job's result does not depend on where it ran: every method starts from the same seed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.config.project import ProjectConfig, with_settings
from simulations.online import MethodResult, ProgressFn, run_method
from simulations.streams import StreamSpec

if TYPE_CHECKING:
    from cloud.teacher.teacher import Teacher
    from simulations.methods import MethodFactory


@dataclass(frozen=True)
class Job:
    """One row of one table: ``method`` on ``stream`` with ``settings`` over the project's."""

    method: str
    stream: StreamSpec
    settings: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Bench:
    """What every job of one run shares."""

    project: ProjectConfig
    out: Path  # the cloud's model folder lives in out/model
    delay: int = 1
    seed: int = 0
    threads: int = 1
    peer_settings: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    @staticmethod
    def frozen(
        settings: dict[str, dict[str, object]],
    ) -> tuple[tuple[str, tuple[tuple[str, object], ...]], ...]:
        """``peer_settings`` in the hashable form a ``Bench`` keeps."""
        return tuple((name, tuple(values.items())) for name, values in settings.items())


def factory_for(
    bench: Bench, methods: Sequence[str], settings: Sequence[tuple[str, object]] = ()
) -> MethodFactory:
    """The factory of these methods and settings, built once per process.

    It is kept until another is asked for: the command's own check, the export before
    workers start and the in-process jobs share one, so the student, the cloud and the
    teacher load once.
    """
    key = (bench, frozenset(methods), tuple(settings))
    if key not in _FACTORIES:
        _FACTORIES.clear()  # one set of models at a time
        _FACTORIES[key] = _build_factory(bench, methods, settings)
    return _FACTORIES[key]


# per process: the models of the last (bench, methods, settings) asked for
_FACTORIES: dict[tuple[Bench, frozenset[str], tuple[tuple[str, object], ...]], MethodFactory] = {}


def _build_factory(
    bench: Bench, methods: Sequence[str], settings: Sequence[tuple[str, object]]
) -> MethodFactory:
    """The student for the peers; the cloud (exported into ``out/model``) only when a row needs it."""
    from cloud.server.models import load_cloud_models
    from cloud.shipped import distilled_student
    from simulations.methods import CLOUD_DEVICE_METHODS, MethodFactory
    from simulations.peers.student import is_distilled, load_student_model, source_images

    project = (
        with_settings(bench.project, dict(settings), "this run") if settings else bench.project
    )
    student = distilled_student(project)
    cloud_models = None
    if set(methods) & set(CLOUD_DEVICE_METHODS) and is_distilled(student):
        cloud_models = load_cloud_models(project, bench.out)
    return MethodFactory(
        load_student_model(student),
        project,
        cloud_models,
        bench.delay,
        bench.seed,
        source=lambda: source_images(project, student),
        teacher=lambda: project_teacher(project, student),
        peer_settings={name: dict(values) for name, values in bench.peer_settings},
    )


def project_teacher(project: ProjectConfig, student: Path) -> Teacher:
    """A fresh copy of the project's teacher (CEMA's cloud adapts its own)."""
    from cloud.teacher.factory import teacher_for
    from simulations.peers.student import class_names

    return teacher_for(project.teacher, class_names(student), project.data.image_size)


def run_jobs(
    bench: Bench,
    jobs: Sequence[Job],
    workers: int = 1,
    progress: ProgressFn | None = None,
) -> list[MethodResult]:
    """Every job's result, in the order given."""
    methods = tuple(dict.fromkeys(job.method for job in jobs))
    if workers <= 1:
        return [_run_here(bench, job, methods, progress) for job in jobs]
    factory_for(bench, methods)  # export the device model once, here
    context = get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        updates = manager.Queue()
        relay = _Relay(updates, progress)
        futures = [pool.submit(_run_in_worker, bench, job, methods, updates) for job in jobs]
        try:
            return [future.result() for future in futures]
        finally:
            relay.stop()


def _run_here(
    bench: Bench, job: Job, methods: Sequence[str], progress: ProgressFn | None
) -> MethodResult:
    from cloud.data.formats import open_benchmark

    factory = factory_for(bench, methods, job.settings)
    dataset = open_benchmark(factory.project.data.shifted)
    return run_method(job.method, factory.create, dataset, job.stream, bench.seed, progress)


def _run_in_worker(
    bench: Bench, job: Job, methods: Sequence[str], updates: queue.Queue[tuple[str, int]]
) -> MethodResult:
    import torch

    torch.set_num_threads(bench.threads)
    return _run_here(bench, job, methods, lambda text, n: updates.put((text, n)))


class _Relay:
    """Drains the workers' progress queue into this process's bar."""

    def __init__(self, updates: queue.Queue[tuple[str, int]], progress: ProgressFn | None) -> None:
        self.updates, self.progress = updates, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="progress-relay")
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set() or not self.updates.empty():
            try:
                text, count = self.updates.get(timeout=0.2)
            except (queue.Empty, EOFError, OSError):
                continue
            if self.progress:
                self.progress(text, count)

    def stop(self) -> None:
        """Wait for the last updates, then end."""
        self._stop.set()
        self._thread.join(timeout=5)
