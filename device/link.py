"""``CloudLink``: the device's connection to the cloud, in two background threads.

The uploader drains the on-disk ``UploadQueue`` (a chunk leaves only when the cloud
acknowledged it); the watcher registers, then keeps a ``WatchPrompts`` stream open and
hands every valid prompt to the main loop. Neither ever blocks prediction: when the cloud
is down they retry with exponential backoff and jitter, and every RPC has a deadline.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from device.spool import UploadQueue
from device.stats_sender import StatsSender
from protocol.config.wire import encoding_from_wire
from protocol.errors import CdcaError
from protocol.messages import (
    PROTOCOL_VERSION,
    DecodedPrompt,
    ProtocolError,
    call_metadata,
    decode_prompt,
)
from protocol.upload import Upload
from protocol.v1 import cdca_pb2, cdca_pb2_grpc

log = logging.getLogger("cdca.device")
# Calls the cloud will refuse again if repeated unchanged: drop the upload instead of retrying.
PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
STOP_WATCHING = {grpc.StatusCode.FAILED_PRECONDITION}
# Refusals a retry will not fix by itself: say so loudly (but keep retrying: it may be re-keyed).
NEEDS_OPERATOR = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
# Trailing metadata of a RESOURCE_EXHAUSTED upload: how long the cloud asks the device to wait.
RETRY_AFTER_METADATA = "retry-after-ms"
ACK_TIMES_KEPT = 256  # acknowledgement times of the latest batches, for the prompt turnaround
# The first Register happens before the first frame, so the cloud's device settings apply
# from the start; a cloud that is away delays the device by at most this much.
FIRST_REGISTER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LinkConfig:
    """Where the cloud is and how patiently to talk to it."""

    target: str
    device_id: str
    token: str
    model_sha256: str
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    rpc_timeout: float = 10.0  # deadline of every unary call and upload
    watch_timeout: float = 60.0  # a WatchPrompts stream is re-opened after this
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024


def _retry_after(err: grpc.RpcError) -> float:
    """Seconds the cloud asked to wait (its ``retry-after-ms`` trailer), 0 without one."""
    trailers = getattr(err, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        if key == RETRY_AFTER_METADATA:
            try:
                return min(300.0, max(0.0, int(value) / 1000))  # a cloud cannot park a device
            except ValueError:
                return 0.0
    return 0.0


class Backoff:
    """Exponential backoff with full jitter: wait a random time up to the current ceiling."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.ceiling = initial, maximum, initial

    def next_wait(self) -> float:
        """Seconds to wait before the next try; the ceiling doubles up to the maximum."""
        wait = random.uniform(self.ceiling / 2, self.ceiling)
        self.ceiling = min(self.maximum, self.ceiling * 2)
        return wait

    def reset(self) -> None:
        """After a success."""
        self.ceiling = self.initial


@dataclass
class LinkStats:
    """What the link did, for the device's summary."""

    uploads_acked: int = 0
    samples_acked: int = 0
    samples_stored_before: int = 0  # of those, in batches the cloud already had (resends)
    samples_refused: int = 0
    uploads_rejected: int = 0
    rpc_errors: int = 0
    prompts_received: int = 0
    pauses: int = 0  # answers asking the device to hold back uploads (the cloud is behind)
    bytes_up: int = 0  # protobuf bytes of acknowledged uploads
    bytes_down: int = 0  # protobuf bytes of prompts applied
    upload_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    # from the cloud's acknowledgement of a batch to the prompt it learned from that batch
    turnaround_ms: list[float] = field(default_factory=list)


def channel(config: LinkConfig) -> grpc.Channel:
    """A channel with the message caps and, when certificates are given, TLS."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    if config.ca_cert is None:
        return grpc.insecure_channel(config.target, options=options)
    credentials = grpc.ssl_channel_credentials(
        _read(config.ca_cert), _read(config.client_key), _read(config.client_cert)
    )
    return grpc.secure_channel(config.target, credentials, options=options)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


def encode_upload(upload: Upload) -> bytes:
    """One upload as queue bytes (npz of ``Upload.arrays``)."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = dict(upload.arrays())
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode_upload(payload: bytes) -> Upload:
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return Upload.from_arrays({name: data[name] for name in data.files})


class CloudLink:
    """Background upload and prompt delivery for one device.

    Args:
        config: server address, identity and patience.
        queue: the on-disk upload queue the main loop fills.
        prompt_shapes: the model's adaptation input shapes (prompts are checked against them).
        on_prompt: called from the watcher thread with each valid new prompt.
        known_version: the prompt version the device already runs (from its cache).
        on_settings: called from the watcher thread with the device settings the cloud
            hands out at each ``Register`` (TOML literals by key, ``protocol.config.wire``).
    """

    def __init__(
        self,
        config: LinkConfig,
        queue: UploadQueue,
        prompt_shapes: dict[str, tuple[int, ...]],
        on_prompt: Callable[[DecodedPrompt], None],
        known_version: int = 0,
        on_settings: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self.config, self.queue, self.prompt_shapes = config, queue, prompt_shapes
        self.on_prompt, self.known_version = on_prompt, known_version
        self.on_settings = on_settings
        self.stats = LinkStats()
        self.metadata = call_metadata(config.device_id, config.token)
        self._channel = channel(config)
        self._stub = cdca_pb2_grpc.CloudAdaptationStub(self._channel)  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watch_call: grpc.Future | None = None
        self._last_refusal = ""
        self._registered = False
        self._acked_at: dict[int, float] = {}  # batch id -> when the cloud acknowledged it
        self._pause_until = 0.0  # monotonic time until which the cloud asked for no uploads
        # how uploads travel: what the cloud's settings say at Register (raw until then)
        self.encoding = encoding_from_wire({})
        self.stats_sender = StatsSender(self.encoding.stats_resend_distance)
        self._threads = [
            threading.Thread(target=self._upload_loop, name="uploader", daemon=True),
            threading.Thread(target=self._watch_loop, name="watcher", daemon=True),
        ]

    def start(self) -> None:
        """Register once (the cloud's settings and prompt), then start both threads."""
        try:
            self._register(min(self.config.rpc_timeout, FIRST_REGISTER_TIMEOUT_S))
        except grpc.RpcError as err:
            self.stats.rpc_errors += 1
            self._explain(err, "the cloud is away at start; running on this device's settings")
        for thread in self._threads:
            thread.start()

    def holding_back(self) -> bool:
        """True while the cloud asked this device to hold back its uploads (back-pressure)."""
        return time.monotonic() < self._pause_until

    def notify(self) -> None:
        """The main loop queued something: upload it now."""
        self._wake.set()

    def drain(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the queue to empty; True when it did."""
        deadline = time.monotonic() + seconds
        while len(self.queue) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return len(self.queue) == 0

    def close(self) -> None:
        """Stop both threads and the channel."""
        self._stop.set()
        self._wake.set()
        if self._watch_call is not None:
            self._watch_call.cancel()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=self.config.rpc_timeout)
        self._channel.close()

    def _upload_loop(self) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self._stop.is_set():
            item = self.queue.peek()
            if item is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            sent = self._send(*item)
            if sent is True:
                backoff.reset()
            else:  # the cloud's own retry hint, when it gave one, else backoff
                self._stop.wait(max(sent or 0.0, backoff.next_wait()))

    def _send(self, seq: int, payload: bytes) -> bool | float:
        """Upload one queued batch; True when the queue moved on (acknowledged or dropped).

        Otherwise False, or the seconds the cloud asked the device to wait before retrying.
        """
        try:
            upload = _decode_upload(payload)
        except (OSError, ValueError, KeyError, ProtocolError) as err:
            log.warning("dropping an unreadable queued upload %d: %s", seq, err)
            self.queue.ack(seq)
            return True
        sender = self.stats_sender
        with_stats = sender.include(upload.batch_stats, upload.shift)
        chunks = upload.chunks(self.config.device_id, encoding=self.encoding, with_stats=with_stats)
        start = time.perf_counter()
        try:
            summary = self._stub.Upload(
                iter(chunks), metadata=self.metadata, timeout=self.config.rpc_timeout
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.ABORTED and not with_stats:
                sender.forget()  # the cloud holds no statistics of ours: resend with them
                return self._send(seq, payload)
            return self._upload_failed(seq, err)
        sender.acknowledged(upload.batch_stats, with_stats)
        self.stats.upload_ms.append((time.perf_counter() - start) * 1e3)
        self._acked_at[upload.batch_id] = time.monotonic()
        while len(self._acked_at) > ACK_TIMES_KEPT:
            self._acked_at.pop(next(iter(self._acked_at)))
        self.queue.ack(seq)
        self.stats.uploads_acked += 1
        self.stats.bytes_up += sum(chunk.ByteSize() for chunk in chunks)
        self.stats.samples_acked += summary.accepted
        if summary.stored_before:
            self.stats.samples_stored_before += summary.accepted
        self.stats.samples_refused += summary.refused_over_budget
        if summary.upload_pause_ms:
            self.stats.pauses += 1
            self._pause_until = time.monotonic() + summary.upload_pause_ms / 1000
        return True

    def _upload_failed(self, seq: int, err: grpc.RpcError) -> bool | float:
        self.stats.rpc_errors += 1
        code = err.code()
        if code in PERMANENT:
            log.error(
                "the cloud refused upload %d (%s): %s; dropping it", seq, code.name, err.details()
            )
            self.queue.ack(seq)
            self.stats.uploads_rejected += 1
            return True
        self._explain(err, f"upload {seq} failed; will retry")
        return _retry_after(err)

    def _watch_loop(self) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self._stop.is_set():
            try:
                if not self._registered:
                    self._register()
                backoff.reset()
                self._watch()
            except grpc.RpcError as err:
                code = err.code()
                if self._stop.is_set() or code == grpc.StatusCode.CANCELLED:
                    return
                self.stats.rpc_errors += 1
                if code in STOP_WATCHING:
                    log.error("the cloud will not adapt this device: %s", err.details())
                    return
                self._registered = False  # a restarted cloud may have forgotten this device
                self._explain(err, "prompt stream ended; reconnecting")
                self._stop.wait(backoff.next_wait())

    def _explain(self, err: grpc.RpcError, what: str) -> None:
        """Refusals that need an operator are errors (once per new reason); outages are debug."""
        code = err.code()
        if code not in NEEDS_OPERATOR:
            log.debug("%s (%s)", what, code.name)
            return
        reason = f"{code.name}: {err.details()}"
        if reason != self._last_refusal:
            log.error("the cloud refused this device (%s); still predicting offline", reason)
            self._last_refusal = reason

    def _register(self, timeout: float | None = None) -> None:
        request = cdca_pb2.RegisterRequest(
            device_id=self.config.device_id,
            protocol_version=PROTOCOL_VERSION,
            model_sha256=self.config.model_sha256,
        )
        response = self._stub.Register(
            request, metadata=self.metadata, timeout=timeout or self.config.rpc_timeout
        )
        self._registered = True
        self.encoding = encoding_from_wire(response.device_settings)
        # a new registration: the cloud may hold none of this device's statistics
        self.stats_sender = StatsSender(self.encoding.stats_resend_distance)
        log.info(
            "registered with %s (upload budget %.2f)", self.config.target, response.upload_budget
        )
        if response.device_settings and self.on_settings is not None:
            self.on_settings(dict(response.device_settings))
        if response.HasField("prompt"):
            self._deliver(response.prompt, pushed=False)

    def _watch(self) -> None:
        request = cdca_pb2.PromptRequest(
            device_id=self.config.device_id, known_version=self.known_version
        )
        call = self._stub.WatchPrompts(
            request, metadata=self.metadata, timeout=self.config.watch_timeout
        )
        self._watch_call = call
        try:
            for message in call:
                self._deliver(message)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise  # a deadline just means: re-open the stream

    def _deliver(self, message: cdca_pb2.Prompt, pushed: bool = True) -> None:
        if message.version <= self.known_version:
            return
        self.known_version = message.version  # a refused version is not asked for again
        try:
            prompt = decode_prompt(message, self.prompt_shapes)
        except CdcaError as err:
            log.error(
                "refused prompt v%d from the cloud: %s; keeping the last good one",
                message.version,
                err,
            )
            return
        self.stats.prompts_received += 1
        self.stats.bytes_down += message.ByteSize()
        if pushed and prompt.created_unix_ms:  # a prompt handed over at registration is old news
            self.stats.delivery_ms.append(time.time() * 1e3 - prompt.created_unix_ms)
        acked = self._acked_at.get(prompt.learned_from_batch) if pushed else None
        if acked is not None:
            self.stats.turnaround_ms.append((time.monotonic() - acked) * 1e3)
        self.on_prompt(prompt)
