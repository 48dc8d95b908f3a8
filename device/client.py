"""``DeviceClient``: predict every frame, pick uploads (UGS), apply the cloud's prompts; no torch.

The main loop never waits for the network. Per batch it applies the newest prompt the
watcher thread received (at a batch boundary, so a batch never mixes two prompts), runs
the ONNX model with its own batch statistics (``stat_mix`` = 1, the U-VPA device
configuration), writes one JSON line per frame, and queues the chosen frames on disk for
the uploader thread. The last applied prompt is cached on disk, so a restarted device
keeps it even with the cloud away. So are the settings the cloud hands out at ``Register``
(the project's ``[adaptation.device]``): they replace the device's own flags as soon as
they arrive, and a restarted device starts from the last ones it was given.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from device.agent import DeviceAgent
from device.link import CloudLink, LinkConfig, LinkStats, encode_upload
from device.runtime import DeviceRuntime
from device.sources import Frames
from device.spool import PromptCache, UploadQueue
from protocol.config.adaptation import DeviceSettings
from protocol.config.wire import settings_from_wire
from protocol.errors import CdcaError
from protocol.files import atomic_write
from protocol.messages import DecodedPrompt

log = logging.getLogger("cdca.device")


@dataclass(frozen=True)
class ClientConfig:
    """How one device runs."""

    state_dir: Path
    settings: DeviceSettings = field(default_factory=DeviceSettings)  # until the cloud's arrive
    seed: int = 0  # this device's random picks
    fps: float | None = None  # pace the stream like a camera; None = as fast as possible
    drain_seconds: float = 5.0  # at the end, wait this long for queued uploads
    queue_items: int = 1000


class DeviceClient:
    """One device: runtime, sampler, on-disk queue and prompt cache, and an optional cloud link."""

    def __init__(
        self, runtime: DeviceRuntime, config: ClientConfig, link: LinkConfig | None
    ) -> None:
        self.runtime, self.config = runtime, config
        self.settings_file = config.state_dir / "settings.json"
        self.agent = DeviceAgent(runtime, self._restore_settings(), config.seed)
        self.cache = PromptCache(config.state_dir / "prompt.npz")
        self.queue = UploadQueue(config.state_dir / "queue", max_items=config.queue_items)
        self.prompt_version = self._restore_prompt()
        self._pending: DecodedPrompt | None = None
        self._pending_settings: dict[str, str] | None = None
        self._lock = threading.Lock()
        self.link = None
        if link is not None:
            shapes = {k: tuple(v.shape) for k, v in runtime.defaults.items()}
            self.link = CloudLink(
                link, self.queue, shapes, self._receive, self.prompt_version, self._receive_settings
            )
        self.report = RunReport()

    def run(self, batches: Iterable[Frames], out: TextIO | None) -> RunReport:
        """Predict the whole stream; returns the run's numbers."""
        if self.link is not None:
            self.link.start()
        try:
            for frames in batches:
                started = time.perf_counter()
                self._step(frames, out)
                self._pace(len(frames.images), started)
        finally:
            self._finish()
        return self.report

    def _step(self, frames: Frames, out: TextIO | None) -> None:
        self._apply_pending()
        step = self.agent.step(frames.images)
        logits = step.logits
        first_id = self.report.frames
        self.report.count(logits, frames.labels, step.ms, self.prompt_version)
        self.report.gated += not step.used_prompt
        if step.uploads:
            upload = self.agent.upload(
                frames.images, step, self.report.batches - 1, first_id, self.report.frames
            )
            if self.link is not None and self.link.holding_back() and not upload.shift:
                # back-pressure: this device's batches pile up in the cloud
                self.report.held_back += len(step.decision.indices)
            else:
                self.queue.put(encode_upload(upload))
                self.report.queued += len(step.decision.indices)
                if self.link is not None:
                    self.link.notify()
        if out is not None:
            uploaded = set(step.decision.indices.tolist())
            self._write_lines(
                out,
                logits,
                frames.labels,
                first_id,
                step.ms / len(frames.images),
                uploaded,
                step.used_prompt,
            )

    def _write_lines(
        self,
        out: TextIO,
        logits: np.ndarray,
        labels: np.ndarray | None,
        first_id: int,
        ms_per_frame: float,
        uploaded: set[int],
        used_prompt: bool,
    ) -> None:
        names = self.runtime.manifest.class_names
        exp = np.exp(logits - logits.max(1, keepdims=True))
        confidence = (exp / exp.sum(1, keepdims=True)).max(1)
        for i, k in enumerate(logits.argmax(1)):
            line = {
                "frame": first_id + i,
                "class": names[k],
                "index": int(k),
                "confidence": round(float(confidence[i]), 4),
                "latency_ms": round(ms_per_frame, 4),
                "prompt_version": self.prompt_version,
            }
            if labels is not None:
                line["label"] = int(labels[i])
            if i in uploaded:
                line["uploaded"] = True
            if not used_prompt:  # the prompt gate answered without the prompt for this batch
                line["prompt_gated"] = True
            out.write(json.dumps(line) + "\n")

    def _receive(self, prompt: DecodedPrompt) -> None:
        """From the watcher thread: keep the newest; the main loop applies it."""
        with self._lock:
            self._pending = prompt

    def _receive_settings(self, wire: Mapping[str, str]) -> None:
        """From the watcher thread: the cloud's device settings; the main loop applies them."""
        with self._lock:
            self._pending_settings = dict(wire)

    def _apply_pending(self) -> None:
        with self._lock:
            prompt, self._pending = self._pending, None
            wire, self._pending_settings = self._pending_settings, None
        if wire:
            self._apply_settings(wire)
        if prompt is None or prompt.version <= self.prompt_version:
            return
        try:
            self.runtime.set_adaptation(**prompt.parts)
        except CdcaError as err:
            log.error("prompt v%d does not fit this model: %s", prompt.version, err)
            return
        self.prompt_version = prompt.version
        self.report.prompts_applied += 1
        self.cache.save(prompt.version, prompt.parts)
        log.info("applied prompt v%d (%s)", prompt.version, prompt.environment_id)

    def _apply_settings(self, wire: Mapping[str, str]) -> None:
        try:
            settings, unknown = settings_from_wire(wire)
        except CdcaError as err:
            log.error("refused the cloud's device settings (%s); keeping the current ones", err)
            return
        if unknown:
            log.warning("ignoring device settings this version does not know: %s", unknown)
        if settings != self.agent.settings:
            log.info("the cloud's device settings: %s", settings)
            self.agent.configure(settings)
        atomic_write(self.settings_file, (json.dumps(dict(wire), indent=2) + "\n").encode())

    def _restore_settings(self) -> DeviceSettings:
        """The cloud's last settings when this device was given some, else its own."""
        if not self.settings_file.is_file():
            return self.config.settings
        try:
            settings, _ = settings_from_wire(json.loads(self.settings_file.read_text()))
        except (CdcaError, ValueError, OSError) as err:
            log.warning("ignoring the cached device settings: %s", err)
            return self.config.settings
        log.info("restored the cloud's device settings from %s", self.settings_file)
        return settings

    def _restore_prompt(self) -> int:
        cached = self.cache.load()
        if cached is None:
            return 0
        version, parts = cached
        try:
            self.runtime.set_adaptation(**parts)
        except CdcaError as err:
            log.warning("ignoring the cached prompt: %s", err)
            return 0
        log.info("restored prompt v%d from %s", version, self.cache.path)
        return version

    def _pace(self, frames: int, started: float) -> None:
        if self.config.fps:
            time.sleep(max(0.0, frames / self.config.fps - (time.perf_counter() - started)))

    def _finish(self) -> None:
        if self.link is not None:
            self.link.drain(self.config.drain_seconds)
            self.link.close()
            self.report.link = self.link.stats
        self.report.queue_left = len(self.queue)
        self.report.dropped = self.queue.dropped


class RunReport:
    """Counters of one device run, printed as its summary."""

    def __init__(self) -> None:
        self.frames = self.batches = self.correct = self.labelled = 0
        self.queued = self.prompts_applied = self.queue_left = self.dropped = 0
        self.gated = 0  # batches answered without the prompt (device.prompt_gate)
        self.held_back = 0  # samples not queued because the cloud asked to hold back
        self.batch_ms: list[float] = []
        self.frame_ms: list[float] = []
        self.correct_with_prompt = self.labelled_with_prompt = 0
        self.link: LinkStats | None = None

    def count(
        self, logits: np.ndarray, labels: np.ndarray | None, ms: float, prompt_version: int
    ) -> None:
        """One batch's predictions."""
        n = len(logits)
        self.frames += n
        self.batches += 1
        self.batch_ms.append(ms)
        self.frame_ms.append(ms / n)
        if labels is not None:
            hits = int((logits.argmax(1) == labels).sum())
            self.correct += hits
            self.labelled += n
            if prompt_version:
                self.correct_with_prompt += hits
                self.labelled_with_prompt += n

    def summary(self) -> dict[str, object]:
        """JSON-ready numbers."""
        out: dict[str, object] = {
            "frames": self.frames,
            "batches": self.batches,
            "uploads_queued": self.queued,
            "samples_held_back": self.held_back,
            "prompts_applied": self.prompts_applied,
            "batches_prompt_gated": self.gated,
            "queue_left": self.queue_left,
            "queue_dropped": self.dropped,
            "ms_per_frame_p50": _pct(self.frame_ms, 50),
            "ms_per_batch_p50": _pct(self.batch_ms, 50),
            "ms_per_batch_p99": _pct(self.batch_ms, 99),
        }
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 4)
        if self.labelled_with_prompt:
            out["accuracy_with_cloud_prompt"] = round(
                self.correct_with_prompt / self.labelled_with_prompt, 4
            )
        if self.link is not None:
            s = self.link
            out.update(
                {
                    "uploads_acked": s.uploads_acked,
                    "samples_acked": s.samples_acked,
                    "samples_stored_before": s.samples_stored_before,
                    "samples_refused": s.samples_refused,
                    "uploads_rejected": s.uploads_rejected,
                    "rpc_errors": s.rpc_errors,
                    "prompts_received": s.prompts_received,
                    "upload_pauses": s.pauses,
                    "bytes_up": s.bytes_up,
                    "bytes_down": s.bytes_down,
                    "upload_ms_p50": _pct(s.upload_ms, 50),
                    "upload_ms_p99": _pct(s.upload_ms, 99),
                    "prompt_delivery_ms_p50": _pct(s.delivery_ms, 50),
                    "prompt_delivery_ms_p99": _pct(s.delivery_ms, 99),
                    "prompt_turnaround_ms_p50": _pct(s.turnaround_ms, 50),
                    "prompt_turnaround_ms_p99": _pct(s.turnaround_ms, 99),
                }
            )
        return out


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
