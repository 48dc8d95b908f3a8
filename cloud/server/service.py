"""The ``cdca.v1.CloudAdaptation`` servicer: authentication, validation, budgets, then hand-off.

Every call is authenticated from its metadata (device id + ``Bearer`` token) before
anything else; every tensor is validated before it is decoded (protocol/messages.py). A
device is not trusted: a bad request ends that call with a status that says what to fix,
costs the other devices nothing and leaves the server serving the rest:

==========================================  =====================
missing metadata, unknown/revoked/expired
device or wrong token (one answer for all)  UNAUTHENTICATED
another device's id or prompt               PERMISSION_DENIED
undecodable bytes, wrong dtype, shape,
size, NaN, absurd statistics, ids           INVALID_ARGUMENT
wrong protocol version or model             FAILED_PRECONDITION
upload before registering that model        FAILED_PRECONDITION
too many samples or chunks in one upload,
inbox quota (with ``retry-after-ms``)       RESOURCE_EXHAUSTED
message over the size cap                   RESOURCE_EXHAUSTED (gRPC itself)
==========================================  =====================

Budgets hold against what the server counts itself (``cloud.server.limits``): samples
beyond a device's token bucket, or beyond its budget share of the frames it claims, are
refused over budget; reported new environments beyond its shift bucket are taken as
ordinary uploads. An upload is stored only once its stream completed, and a batch sent
again with the same content is acknowledged with its first answer, not stored twice. The
answer also carries back-pressure: how long the device should hold back uploads while the
worker still has one of its batches (``AdaptationWorker.upload_pause``).
Device ids from a caller are shown at most ``SHOWN_ID_CHARS`` long in logs and errors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import numpy as np
import torch

from cloud.adaptation.guard import stats_problem
from cloud.server.board import PromptBoard
from cloud.server.handlers import UNDECODABLE
from cloud.server.limits import DeviceAllowances
from cloud.server.models import ServedModel
from cloud.server.registry import DEVICE_ID, DeviceRegistry, saturate
from cloud.server.storage import Inbox, StoredBatch
from cloud.server.warnings import ThrottledWarnings
from cloud.server.worker import AdaptationWorker
from protocol.config.adaptation import DeviceSettings
from protocol.config.server import ServerConfig
from protocol.config.wire import settings_to_wire
from protocol.errors import CdcaError
from protocol.messages import (
    DEVICE_METADATA,
    PROTOCOL_VERSION,
    SHARED_PROMPT_ID,
    TOKEN_METADATA,
    DecodedUpload,
    check_protocol_version,
    decode_upload,
)
from protocol.v1 import cdca_pb2, cdca_pb2_grpc

log = logging.getLogger("cdca.cloud")
WATCH_WAIT_SECONDS = 30.0
MODEL_CHUNK_BYTES = 512 * 1024
SHOWN_ID_CHARS = 64
RETRY_AFTER_METADATA = "retry-after-ms"  # trailing metadata of a RESOURCE_EXHAUSTED upload
INBOX_RETRY_MS = 5000
BEARER = "Bearer "
NOT_ACCEPTED = (
    "device id or token not accepted (unknown, revoked or expired device, or a "
    "wrong token): enrol the device with `cdca cloud enrol` and start it with the "
    "token that prints"
)


def shown(text: str) -> str:
    """A caller's string as logs and errors show it: quoted, at most SHOWN_ID_CHARS long."""
    if len(text) <= SHOWN_ID_CHARS:
        return repr(text)
    return f"{text[:SHOWN_ID_CHARS]!r}... ({len(text)} characters)"


class CloudAdaptationService(cdca_pb2_grpc.CloudAdaptationServicer):
    """One server's RPC handlers; the heavy work happens in ``AdaptationWorker``."""

    def __init__(
        self,
        config: ServerConfig,
        device: DeviceSettings,
        registry: DeviceRegistry,
        inbox: Inbox,
        worker: AdaptationWorker,
        board: PromptBoard,
        served: ServedModel,
        running_stats: torch.Tensor,
    ) -> None:
        self.config, self.device, self.registry, self.inbox = config, device, registry, inbox
        self.device_settings = settings_to_wire(device)
        self.worker, self.board, self.served = worker, board, served
        self.limits, self.running_stats = config.limits, running_stats
        self.allowances = DeviceAllowances(config.limits)
        # each device's last batch statistics: uploads without any reuse them (stats_sender)
        self.held_stats: dict[str, np.ndarray] = {}
        self.warnings = ThrottledWarnings(log)

    async def Register(  # noqa: N802 (gRPC method names)
        self, request: cdca_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> cdca_pb2.RegisterResponse:
        """Check version and model, then hand the device its settings and current prompt."""
        device_id = await self._authenticate(context, request)
        try:
            check_protocol_version(request.protocol_version)
        except CdcaError as err:
            await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(err))
        if request.model_sha256 not in self.served.accepted_sha256:
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device runs model {request.model_sha256[:12] or '(none)'}..., this server adapts "
                f"{self.served.manifest.sha256[:12]}...: download it (cdca device run --bootstrap)",
            )
        self.registry.seen(device_id, request.model_sha256)
        self.warnings.warn(
            device_id,
            "register",
            "registered %s (model %s)",
            device_id,
            request.model_sha256[:12],
            level=logging.INFO,
        )
        response = cdca_pb2.RegisterResponse(
            protocol_version=PROTOCOL_VERSION,
            upload_budget=self.device.budget,
            device_settings=self.device_settings,
        )
        prompt = self.board.latest(device_id)
        if prompt is not None:
            response.prompt.CopyFrom(prompt)
        return response

    async def Upload(  # noqa: N802
        self,
        request_iterator: AsyncIterator[cdca_pb2.UploadChunk],
        context: grpc.aio.ServicerContext,
    ) -> cdca_pb2.UploadSummary:
        """Collect one batch's chunks, enforce the budget, persist, queue for the worker."""
        device_id = await self._authenticate(context)
        record = self.registry.record(device_id)
        if record is None or record.model_sha256 not in self.served.accepted_sha256:
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "register with the served model before uploading",
            )
        wait = self.allowances.seconds_until_sample(device_id)
        if wait > 0:  # a flooding device: refused before its chunks are even decoded
            await self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this device uploads faster than server.limits allow: retry in {wait:.1f} s",
                ((RETRY_AFTER_METADATA, str(max(1, round(wait * 1000)))),),
            )
        parts: list[DecodedUpload] = []
        digest = hashlib.sha256()
        async for chunk in request_iterator:
            if chunk is UNDECODABLE:
                await self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an upload chunk is not a cdca.v1.UploadChunk",
                )
            if len(parts) >= self.limits.max_chunks_per_upload:
                await self._abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"more than {self.limits.max_chunks_per_upload} chunks in one upload: "
                    "send fewer, fuller chunks",
                )
            digest.update(_identity(chunk))
            parts.append(await self._decode_chunk(context, device_id, chunk, parts))
        if not parts or not parts[-1].last:  # a cut-off stream also ends here: store nothing
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "an upload ends with a chunk marked last; nothing of this one was stored",
            )
        return await self._accept(context, device_id, parts, digest.hexdigest())

    async def GetPrompt(  # noqa: N802
        self, request: cdca_pb2.PromptRequest, context: grpc.aio.ServicerContext
    ) -> cdca_pb2.Prompt:
        """The newest prompt above ``known_version`` (the device's own or the shared one)."""
        device_id = await self._authenticate(context, request, names_caller=False)
        if request.device_id == SHARED_PROMPT_ID:
            shared = self.worker.shared_prompt()
            return shared if shared.version > request.known_version else cdca_pb2.Prompt()
        await self._check_owner(context, device_id, request.device_id)
        prompt = self.board.latest(device_id)
        if prompt is None or prompt.version <= request.known_version:
            return cdca_pb2.Prompt()
        return prompt

    async def WatchPrompts(  # noqa: N802
        self, request: cdca_pb2.PromptRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cdca_pb2.Prompt]:
        """Push each newer prompt of the caller's own until the call's deadline or shutdown."""
        device_id = await self._authenticate(context, request, names_caller=False)
        await self._check_owner(context, device_id, request.device_id)
        known = request.known_version
        metrics = self.worker.metrics
        metrics.connected += 1
        try:
            while not self.board.closed:
                remaining = context.time_remaining()
                wait = (
                    WATCH_WAIT_SECONDS if remaining is None else min(WATCH_WAIT_SECONDS, remaining)
                )
                if wait <= 0:
                    return
                prompt = await self.board.wait_newer(device_id, known, wait)
                if prompt is not None:
                    known = prompt.version
                    yield prompt
        finally:
            metrics.connected -= 1

    async def DownloadModel(  # noqa: N802
        self, request: cdca_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cdca_pb2.ModelChunk]:
        """The manifest, then each file it names (the model, its defaults, ...), in chunks."""
        await self._authenticate(context, request)
        manifest = self.served.manifest
        yield cdca_pb2.ModelChunk(manifest_json=self.served.manifest_path.read_text())
        for name in manifest.files:
            data = (
                self.served.model_bytes()
                if name == manifest.model_file
                else ((self.served.folder / name).read_bytes())
            )
            for offset in range(0, len(data), MODEL_CHUNK_BYTES):
                yield cdca_pb2.ModelChunk(
                    file_name=name,
                    offset=offset,
                    total_size=len(data),
                    data=data[offset : offset + MODEL_CHUNK_BYTES],
                )

    async def _authenticate(
        self,
        context: grpc.aio.ServicerContext,
        request: object = None,
        names_caller: bool = True,
    ) -> str:
        """The caller's device id; aborts the call unless its metadata prove it.

        ``request``: the call's request, which must have parsed; with ``names_caller`` its
        ``device_id``, when set, must be the caller's (prompt requests name whose prompt
        they want, which ``_check_owner`` judges).
        """
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        device_id = metadata.get(DEVICE_METADATA, "")
        authorization = metadata.get(TOKEN_METADATA, "")
        if not device_id or not authorization.startswith(BEARER):
            await self._abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing {DEVICE_METADATA!r} or {TOKEN_METADATA!r} ('Bearer <token>') "
                "metadata: start the device with --device-id and --token",
            )
        token = authorization[len(BEARER) :]
        if not DEVICE_ID.match(device_id) or not self.registry.authenticate(device_id, token):
            self.warnings.warn(
                device_id[:SHOWN_ID_CHARS],
                "auth",
                "refused device %s: unknown, revoked, expired or a wrong token",
                shown(device_id),
            )
            await self._abort(context, grpc.StatusCode.UNAUTHENTICATED, NOT_ACCEPTED)
        if request is UNDECODABLE:
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request is not a cdca.v1 message of this call",
            )
        claimed = str(getattr(request, "device_id", "")) if names_caller else ""
        if claimed and claimed != device_id:
            await self._abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this call is authenticated as {device_id!r} but names {shown(claimed)}",
            )
        return device_id

    async def _check_owner(
        self, context: grpc.aio.ServicerContext, caller: str, wanted: str
    ) -> None:
        if wanted and wanted != caller:
            self.warnings.warn(
                caller, "owner", "%s asked for the prompts of %s", caller, shown(wanted)
            )
            await self._abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a device reads only its own prompts and {SHARED_PROMPT_ID!r}",
            )

    async def _decode_chunk(
        self,
        context: grpc.aio.ServicerContext,
        device_id: str,
        chunk: cdca_pb2.UploadChunk,
        previous: list[DecodedUpload],
    ) -> DecodedUpload:
        if chunk.device_id != device_id:
            await self._abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"upload chunk names device {shown(chunk.device_id)}, the call is {device_id!r}",
            )
        if previous and previous[-1].last:
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "a chunk after the one marked last"
            )
        if previous and chunk.batch_id != previous[0].batch_id:
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "one upload stream carries one batch: batch_id changed mid-stream",
            )
        if not previous and not chunk.HasField("batch_stats") and device_id not in self.held_stats:
            await self._abort(  # the device resends with them (device/stats_sender.py)
                context,
                grpc.StatusCode.ABORTED,
                "this server holds no batch_stats of this device: send them with the upload",
            )
        most = self.limits.max_samples_per_upload
        if sum(p.offered for p in previous) + len(chunk.samples) > most:
            await self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {most} samples in one upload: split it",
            )
        worth_decoding = max(
            0, self.allowances.available_samples(device_id) - sum(len(p.images) for p in previous)
        )
        try:
            decoded = decode_upload(
                chunk,
                self.served.image_shape,
                self.served.stats_shape,
                self.config.max_message_bytes,
                worth_decoding,
            )
        except CdcaError as err:
            self.warnings.warn(
                device_id, "invalid", "refused an upload from %s: %s", device_id, err
            )
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if decoded.batch_stats is not None:
            problem = stats_problem(torch.tensor(decoded.batch_stats), self.running_stats)
            if problem is not None:
                self.warnings.warn(
                    device_id, "stats", "refused an upload from %s: %s", device_id, problem
                )
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        return decoded

    async def _accept(
        self,
        context: grpc.aio.ServicerContext,
        device_id: str,
        parts: list[DecodedUpload],
        digest: str,
    ) -> cdca_pb2.UploadSummary:
        earlier = self.registry.earlier_upload(device_id, digest)
        if earlier is not None:
            log.info(
                "%s sent batch %d again: acknowledged as before, stored once",
                device_id,
                parts[0].batch_id,
            )
            return cdca_pb2.UploadSummary(
                accepted=earlier[0], refused_over_budget=earlier[1], stored_before=True
            )
        frames_seen = saturate(max(p.frames_seen for p in parts))
        images = np.concatenate([p.images for p in parts])
        uncertainty = np.concatenate([p.uncertainty for p in parts])
        wanted = min(len(images), self._claimed_room(device_id, frames_seen))
        shift = any(p.shift for p in parts)
        if wanted or shift:
            await self._check_inbox(context, device_id, images[:wanted].nbytes)
        keep = self.allowances.samples(device_id, wanted)
        if shift and not self.allowances.shift(device_id):
            self.warnings.warn(
                device_id,
                "shift",
                "%s reports new environments faster than "
                "server.limits allow: batch %d taken as an ordinary upload",
                device_id,
                parts[0].batch_id,
            )
            shift = False
        refused = sum(p.offered for p in parts) - keep
        batch_stats = parts[0].batch_stats
        if batch_stats is None:
            batch_stats = self.held_stats[device_id]  # checked on the first chunk
        else:
            self.held_stats[device_id] = batch_stats
        if keep or shift:
            batch = StoredBatch(
                device_id,
                parts[0].batch_id,
                images[:keep],
                uncertainty[:keep],
                batch_stats,
                shift,
                frames_seen,
            )
            self.worker.submit(self.inbox.put(batch))
            self.worker.metrics.upload_batches.inc()
            self.worker.metrics.uploaded_samples.inc(keep)
        self.worker.metrics.over_budget.inc(refused)
        self.registry.count_upload(device_id, frames_seen, keep, refused, digest)
        if refused:
            self.warnings.warn(
                device_id,
                "budget",
                "%s is over its upload budget: refused %d of %d samples",
                device_id,
                refused,
                refused + keep,
            )
        pause_ms = round(1000 * self.worker.upload_pause(device_id))
        return cdca_pb2.UploadSummary(
            accepted=keep, refused_over_budget=refused, upload_pause_ms=pause_ms
        )

    async def _abort(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str], ...] = (),
    ) -> NoReturn:
        """End the call with ``code``, counted among the refusals (``cloud.server.metrics``)."""
        self.worker.metrics.refusals.labels(code.name).inc()
        await context.abort(code, details, trailing_metadata)
        raise AssertionError("unreachable: context.abort raises")  # for type checkers

    def _claimed_room(self, device_id: str, frames_seen: int) -> int:
        """Samples the device's budget share of the frames it claims still allows (an upper bound)."""
        record = self.registry.record(device_id)
        assert record is not None  # authenticated above
        allowed = int(self.device.budget * record.frames_after(frames_seen))
        return max(0, allowed + self.config.upload_slack - record.accepted)

    async def _check_inbox(
        self, context: grpc.aio.ServicerContext, device_id: str, size: int
    ) -> None:
        refusal = self.worker.quota.refusal(device_id, size)
        if refusal is not None:
            self.warnings.warn(device_id, "inbox", "%s: upload refused, %s", device_id, refusal)
            await self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{refusal}: retry in {INBOX_RETRY_MS / 1000:g} s",
                ((RETRY_AFTER_METADATA, str(INBOX_RETRY_MS)),),
            )


def _identity(chunk: cdca_pb2.UploadChunk) -> bytes:
    """A chunk without its pixels and statistics (what identifies a resend).

    The same batch sent again in another encoding, or with its statistics left out, is
    still the same batch.
    """
    light = cdca_pb2.UploadChunk()
    light.CopyFrom(chunk)
    light.ClearField("batch_stats")
    for sample in light.samples:
        sample.ClearField("image")
        sample.ClearField("image_file")
    return light.SerializeToString(deterministic=True)
