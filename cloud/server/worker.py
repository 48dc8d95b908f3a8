"""``AdaptationWorker``: turns the upload inbox into prompts, many devices per fit, off the event loop.

Each device gets an ``AdaptationSession`` (cloud/adaptation/session.py) whose prompt bank
is restored from disk at start-up, as is the fleet's environment bank (saved whenever a
device leaves an environment). VPLU runs in one background thread (torch releases the
GIL, so the gRPC loop keeps answering); a prompt that passes the safety valve is saved,
then published. An inbox file is removed only after its batch was ingested, the bank
saved and the batch recorded in ``ingested.log``, so a crash re-runs at most one pass. A
pass takes one waiting batch from each of up to ``fit_devices`` devices per worker (one
in-process worker, or the Ray actors) and fits them together (``FleetCloud.ingest_many``:
one teacher pass, shared model passes); 1, the default, fits one device at a time.
A batch the session refuses is moved to ``rejected/`` with a log line: one bad batch never
stops the worker. A cloud slower than its devices catches up instead of falling further
behind: while a newer batch from the same device waits, a batch is only buffered, and the
fit runs once, on the newest (a prompt learned from a stale batch would be stale too). At
most ``MAX_BUFFERED_WITHOUT_FIT`` in a row, though: a server that cannot even buffer as fast
as its devices upload always has a newer batch waiting, and would otherwise never fit
(`cdca bench reliability`, 64 devices: 1 prompt in 60 s). A device with two batches
waiting when it uploads again is told to hold back its uploads until the worker should
reach it again (``upload_pause``: back-pressure; the answer to each upload carries it: one
pass per ``fit_devices`` devices waiting before it), which bounds the
inbox and the prompts' staleness when the cloud cannot keep up.

Devices share the worker's time fairly (``cloud.server.fair_queue``), so one device's flood
gets its share of the worker and no more; the bytes each device has waiting count against its
inbox quota (``cloud.server.limits``). No prompt that fails the guard
(``cloud.adaptation.guard``) is saved or published. Between batches the worker drops
everything a device revoked with ``--forget`` contributed: its queued uploads, session,
prompt bank and environment-bank entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cloud.adaptation.fleet import DeviceBatch
from cloud.adaptation.guard import prompt_problem
from cloud.adaptation.prompt_bank import Prompt
from cloud.adaptation.session import AdaptationSession, UploadBatch
from cloud.server.board import PromptBoard
from cloud.server.fair_queue import FairQueue
from cloud.server.limits import InboxQuota
from cloud.server.metrics import ServerMetrics
from cloud.server.models import CloudModels
from cloud.server.ray_workers import RayWorkers
from cloud.server.registry import DeviceRegistry
from cloud.server.storage import (
    Inbox,
    IngestLedger,
    StoredBatch,
    load_bank,
    load_environments,
    save_bank,
    save_environments,
)
from cloud.students.preprocess import pixels_from_uint8
from protocol.config.server import LimitsConfig
from protocol.errors import CdcaError
from protocol.files import atomic_write
from protocol.messages import prompt_message
from protocol.v1 import cdca_pb2

log = logging.getLogger("cdca.cloud")
# Batches of one device buffered without a fit before the next fits even if newer ones wait:
# bounds how stale a prompt gets when the server is behind for good, not just for a while.
MAX_BUFFERED_WITHOUT_FIT = 8
PASS_EMA = 0.8  # smoothing of the pass time the upload pause is estimated from
PAUSE_FROM_WAITING = 2  # batches of one device waiting before it is asked to hold back
MAX_UPLOAD_PAUSE_SECONDS = 60.0
FORGET_CHECK_SECONDS = 2.0  # how soon an idle worker notices `cdca cloud revoke --forget`


class AdaptationWorker:
    """Per-device sessions, the inbox queue and prompt publication."""

    def __init__(
        self,
        cloud_models: CloudModels,
        registry: DeviceRegistry,
        inbox: Inbox,
        board: PromptBoard,
        state_dir: Path,
        limits: LimitsConfig | None = None,
        fit_devices: int = 1,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.cloud_models, self.registry, self.inbox, self.board = (
            cloud_models,
            registry,
            inbox,
            board,
        )
        self.banks = state_dir / "prompts"
        self.shared_offset_file = state_dir / "shared-version-offset"
        self.rejected = state_dir / "rejected"
        self.ledger = IngestLedger(state_dir / "ingested.log")
        self.environments_file = state_dir / "environments.safetensors"
        self.fleet = cloud_models.new_fleet()
        self.sessions: dict[str, AdaptationSession] = self.fleet.sessions
        # where fits run: in this process (the fleet itself), or on Ray actors
        self.ray: RayWorkers | None = None
        self.queue = FairQueue()
        self.quota = InboxQuota(limits or LimitsConfig())
        self.sizes: dict[Path, int] = {}  # bytes of each queued inbox file
        self.deferred: Counter[str] = Counter()  # batches buffered without a fit, per device
        self.fit_devices = fit_devices  # devices one pass takes together
        self.metrics = metrics or ServerMetrics()
        self.pass_seconds = 0.0  # smoothed duration of a pass
        self.pass_began = 0.0  # perf_counter() when the running pass began; 0: none runs
        self.arrivals: Counter[str] = Counter()  # batches queued so far, per device
        self.arrival: dict[Path, int] = {}  # each queued batch's place among its device's
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="vplu")
        self.processed = self.unsaved_prompts = 0
        self._shared_cache: tuple[tuple[int, int, int], cdca_pb2.Prompt] | None = None
        self.saved_changes = 0
        # added to the shared prompt's version so that it still rises after a device is forgotten
        self.shared_offset = (
            int(self.shared_offset_file.read_text()) if (self.shared_offset_file.is_file()) else 0
        )

    def restore(self) -> int:
        """Reload every saved prompt bank and the fleet's environments; re-queue unfinished uploads."""
        bank = self.fleet.environments
        if load_environments(self.environments_file, bank, self.cloud_models.neutral):
            log.info("restored %d remembered environments", len(bank.entries))
        self.saved_changes = bank.changes
        for path in sorted(self.banks.glob("*.safetensors")):
            device_id = path.stem
            if not self.registry.is_enrolled(device_id):
                continue
            session, version = self._load_session(device_id)
            if version:
                self.board.restore(device_id, self._message(session, version, batch_id=0))
                log.info(
                    "restored %s's prompt bank (prompt v%d, %d environments)",
                    device_id,
                    version,
                    session.bank.environments,
                )
        pending = self.inbox.pending()
        for path in pending:
            self.submit(path)
        self.apply_forgets()
        return len(pending)

    def submit(self, path: Path) -> None:
        """Queue a persisted inbox file."""
        device_id = self.inbox.device_of(path)
        self.arrivals[device_id] += 1
        self.arrival[path] = self.arrivals[device_id]
        self.sizes[path] = size = path.stat().st_size
        self.quota.add(device_id, size)
        self.queue.put(device_id, path)

    async def run(self) -> None:
        """Ingest queued batches until cancelled, a pass at a time (see the module docstring)."""
        loop = asyncio.get_running_loop()
        while True:
            self.apply_forgets()
            try:
                taken = await asyncio.wait_for(
                    self.queue.take(self.pass_devices()), FORGET_CHECK_SECONDS
                )
            except TimeoutError:
                continue
            began, fitted = time.perf_counter(), self.fleet.device_fits
            self.pass_began = began
            try:
                await self._process(loop, taken)
            finally:
                self.pass_began = 0.0
                seconds = time.perf_counter() - began
                self.pass_seconds = PASS_EMA * self.pass_seconds + (1 - PASS_EMA) * seconds
                for device_id, path in taken:
                    self.quota.remove(device_id, self.sizes.pop(path, 0))
                    self.arrival.pop(path, None)
                    self.queue.charge(device_id, seconds / len(taken))
                self._count_pass(seconds, self.fleet.device_fits - fitted)

    def pass_devices(self) -> int:
        """Devices one pass takes: ``fit_devices`` for each worker that fits in parallel."""
        workers = len(self.ray.actors) if self.ray is not None else 1
        return self.fit_devices * workers

    def upload_pause(self, device_id: str) -> float:
        """Seconds a device should hold back uploads: it is getting ahead of the cloud.

        Two or more of its batches wait: uploading more would only queue batches the
        worker buffers without a fit (and fill the inbox). The pause lasts until the worker
        should reach the device again: one pass for each ``pass_devices`` devices the fair
        queue serves before it, so that with many devices waiting a device is not asked
        back after a single pass only to queue again. One waiting batch is normal while a
        pass runs; pausing then would let a device that slows every pass (a flood, a huge
        batch) cut the others' uploads too.
        """
        if self.queue.waiting(device_id) < PAUSE_FROM_WAITING:
            return 0.0
        running = time.perf_counter() - self.pass_began if self.pass_began else 0.0
        passes = 1 + self.queue.ahead_of(device_id) // self.pass_devices()
        return min(MAX_UPLOAD_PAUSE_SECONDS, passes * max(self.pass_seconds, running))

    def devices_per_worker(self) -> dict[str, int]:
        """Devices whose sessions each fit worker holds (``server``: this process)."""
        if self.ray is not None:
            return self.ray.devices_per_worker()
        return {"server": len(self.sessions)}

    def _count_pass(self, seconds: float, fitted: int) -> None:
        if fitted:
            self.metrics.fits.inc()
            self.metrics.fitted_devices.inc(fitted)
            self.metrics.fit_seconds.observe(seconds)
            self.metrics.fit_width.observe(fitted)

    def apply_forgets(self) -> None:
        """Drop what each device revoked with ``--forget`` contributed (between batches only)."""
        for device_id in self.registry.pending_forgets():
            evidence_before = self._shared_evidence()
            for path in self.queue.drop(device_id):
                self.quota.remove(device_id, self.sizes.pop(path, 0))
                self.arrival.pop(path, None)
                self.inbox.done(path)
            for path in self.inbox.pending():  # uploaded while the revocation was being applied
                if self.inbox.device_of(path) == device_id:
                    self.inbox.done(path)
            self.arrivals.pop(device_id, None)
            entries = self.fleet.forget(device_id)
            if self.ray is not None:
                self.ray.forget(device_id)
            (self.banks / f"{device_id}.safetensors").unlink(missing_ok=True)
            self.board.forget(device_id)
            save_environments(self.environments_file, self.fleet.environments)
            self.saved_changes = self.fleet.environments.changes
            self.shared_offset += max(0, evidence_before - self._shared_evidence()) + 1
            atomic_write(self.shared_offset_file, str(self.shared_offset).encode())
            self.registry.forgotten(device_id)
            log.warning(
                "forgot device %s: its uploads, prompt bank and %d environment entries",
                device_id,
                entries,
            )

    def shared_prompt(self) -> cdca_pb2.Prompt:
        """Every device's domain-agnostic prompt, weighted by environments learned (= version).

        Computed again only after a batch was processed or a device forgotten: a device
        asking for it in a loop costs a lookup.
        """
        key = (self.processed, self.shared_offset, len(self.sessions))
        if self._shared_cache is None or self._shared_cache[0] != key:
            self._shared_cache = (key, self._compute_shared_prompt())
        return self._shared_cache[1]

    def _compute_shared_prompt(self) -> cdca_pb2.Prompt:
        shared = self.fleet.shared_prompt()
        if prompt_problem(shared, self.cloud_models.neutral) is not None:  # never, by construction
            shared = self.cloud_models.neutral
        parts = {k: shared[k] for k in self.cloud_models.adaptation.vplu.parts}
        version = self._shared_evidence() + self.shared_offset
        return prompt_message(
            _numpy(parts), version=version, scope="shared", created_unix_ms=int(time.time() * 1000)
        )

    def _shared_evidence(self) -> int:
        return sum(s.bank.environments - 1 for s in self.sessions.values())

    @property
    def rejected_fits(self) -> int:
        """Fits whose prompt failed the guard, so far (the devices kept their last prompts)."""
        return self.unsaved_prompts + (self.ray or self.fleet).rejected_fits

    def close(self) -> None:
        """Stop the running fit within one model pass, then the thread.

        Its batches stay in the inbox (a batch leaves only after its pass), so the next
        start ingests them again: stopping loses nothing and waits for no long fit.
        """
        self.fleet.vplu.stop.set()
        if self.ray is not None:
            self.ray.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def _process(
        self, loop: asyncio.AbstractEventLoop, taken: list[tuple[str, Path]]
    ) -> None:
        """One pass: load each device's batch, ingest them together, publish, then mark done.

        No fit while a newer batch of the device is queued, unless it has waited too long:
        the fit runs once, on the newest.
        """
        work = []
        for device_id, path in taken:
            fit = (
                self.queue.waiting(device_id) == 0
                or self.deferred[device_id] >= MAX_BUFFERED_WITHOUT_FIT
            )
            loaded = self._load(device_id, path)
            if loaded is not None:
                work.append((*loaded, fit))
        outcomes = await loop.run_in_executor(self.executor, self._ingest, work)
        for (path, batch, fit), outcome in zip(work, outcomes, strict=True):
            await self._finish(path, batch, fit, outcome)

    async def _finish(
        self,
        path: Path,
        batch: StoredBatch,
        fit: bool,
        outcome: cdca_pb2.Prompt | None | CdcaError,
    ) -> None:
        """Publish what a batch taught, then mark it done (or move it to ``rejected/``)."""
        if isinstance(outcome, CdcaError):
            self._reject(path, outcome)
            return
        self._count_deferred(batch.device_id, fit, batch.batch_id)
        if outcome is not None:
            await self.board.publish(batch.device_id, outcome)
            self.metrics.prompts.inc()
            newer = self.arrivals[batch.device_id] - self.arrival.get(path, 0)
            self.metrics.staleness.observe(max(0, newer))
            log.info(
                "prompt v%d for %s (environment %s, from batch %d, %d uploads buffered)",
                outcome.version,
                batch.device_id,
                outcome.environment_id,
                batch.batch_id,
                (self.ray or self.fleet).buffered_uploads(batch.device_id),
            )
        self.ledger.record(path, batch.device_id, len(batch.images))
        self.inbox.done(path)  # last: a crash before this re-ingests the batch, loses nothing
        self.processed += 1

    def _load(self, device_id: str, path: Path) -> tuple[Path, StoredBatch] | None:
        """A queued batch, ready to ingest (None: it was rejected)."""
        try:
            batch = self.inbox.load(path)
            if batch.device_id != device_id:
                raise CdcaError(f"inbox file of {device_id!r} holds a batch of {batch.device_id!r}")
            if not self.registry.is_enrolled(batch.device_id):
                raise CdcaError(f"device {batch.device_id!r} is no longer enrolled")
        except CdcaError as err:
            self._reject(path, err)
            return None
        if batch.device_id not in self.sessions:
            self._load_session(batch.device_id)
        return path, batch

    def _reject(self, path: Path, err: CdcaError) -> None:
        """Move a batch that cannot be ingested to ``rejected/``; the worker goes on."""
        log.warning("rejected %s: %s", path.name, err)
        self.rejected.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.replace(self.rejected / path.name)

    def _count_deferred(self, device_id: str, fitted: bool, batch_id: int) -> None:
        if not fitted:
            self.deferred[device_id] += 1
        elif self.deferred[device_id]:
            log.info(
                "%s: catching up, %d waiting batches buffered and fitted once on batch %d "
                "(%d newer still queued)",
                device_id,
                self.deferred.pop(device_id),
                batch_id,
                self.queue.waiting(device_id),
            )

    def _ingest(
        self, work: list[tuple[Path, StoredBatch, bool]]
    ) -> list[cdca_pb2.Prompt | None | CdcaError]:
        """In the worker thread: learn; for every prompt that ships, persist the bank first."""
        batches = []
        for _, batch, fit in work:
            if batch.shift:
                log.info(
                    "%s reports a new environment at batch %d", batch.device_id, batch.batch_id
                )
            upload = UploadBatch(
                pixels_from_uint8(batch.images),
                torch.from_numpy(batch.uncertainty),
                torch.from_numpy(batch.batch_stats),
                batch.shift,
            )
            batches.append(DeviceBatch(batch.device_id, upload, fit))
        outcomes = (self.ray or self.fleet).ingest_many(batches)
        if self.fleet.environments.changes != self.saved_changes:  # a device left an environment
            save_environments(self.environments_file, self.fleet.environments)
            self.saved_changes = self.fleet.environments.changes
        return [
            self._saved_message(batch, outcome) if isinstance(outcome, dict) else outcome
            for (_, batch, _), outcome in zip(work, outcomes, strict=True)
        ]

    def _saved_message(self, batch: StoredBatch, prompt: Prompt) -> cdca_pb2.Prompt | None:
        """The bank saved with the new prompt, and its message (None: the guard refused it)."""
        problem = prompt_problem(prompt, self.cloud_models.neutral)
        if problem is not None:  # the session guards its fits; this guards what is saved
            log.warning("%s: a prompt was not saved or published: %s", batch.device_id, problem)
            self.unsaved_prompts += 1
            return None
        session = self.sessions[batch.device_id]
        version = self.registry.next_prompt_version(batch.device_id)
        save_bank(self.banks / f"{batch.device_id}.safetensors", session.bank, version)
        return self._message(session, version, batch.batch_id)

    def _load_session(self, device_id: str) -> tuple[AdaptationSession, int]:
        bank, version = load_bank(
            self.banks / f"{device_id}.safetensors",
            self.cloud_models.neutral,
            self.cloud_models.adaptation.prompt_bank,
        )
        return self.fleet.session(device_id, bank), version

    def _message(self, session: AdaptationSession, version: int, batch_id: int) -> cdca_pb2.Prompt:
        current = session.bank.current()
        parts = {k: current[k] for k in self.cloud_models.adaptation.vplu.parts}
        return prompt_message(
            _numpy(parts),
            version=version,
            scope="device",
            environment_id=f"env-{session.bank.environments}",
            learned_from_batch=batch_id,
            created_unix_ms=int(time.time() * 1000),
        )


def _numpy(parts: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in parts.items()}
