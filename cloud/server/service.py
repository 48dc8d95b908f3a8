"""The ``cdca.v1.CloudAdaptation`` servicer: authentication, validation, budgets, then hand-off.

Every call is authenticated from its metadata (device id + bearer token) before anything
else; every tensor is validated before it is decoded (protocol/messages.py). A bad request
ends that call with a status that says what to fix and leaves the server serving the rest:

=====================================  =====================
missing/unknown device, bad token      UNAUTHENTICATED
another device's id or prompt          PERMISSION_DENIED
wrong dtype, shape, size, NaN, ids     INVALID_ARGUMENT
wrong protocol version or model        FAILED_PRECONDITION
upload before registering that model   FAILED_PRECONDITION
too many samples in one upload         RESOURCE_EXHAUSTED
message over the size cap              RESOURCE_EXHAUSTED (gRPC itself)
=====================================  =====================
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import numpy as np

from cloud.server.board import PromptBoard
from cloud.server.registry import DeviceRegistry
from cloud.server.storage import Inbox, StoredBatch
from cloud.server.worker import AdaptationWorker
from cloud.server.world import ServedModel
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
MAX_SAMPLES_PER_UPLOAD = 1024
WATCH_WAIT_SECONDS = 30.0
MODEL_CHUNK_BYTES = 512 * 1024


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
    ) -> None:
        self.config, self.device, self.registry, self.inbox = config, device, registry, inbox
        self.device_settings = settings_to_wire(device)
        self.worker, self.board, self.served = worker, board, served

    async def Register(  # noqa: N802 (gRPC method names)
        self, request: cdca_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> cdca_pb2.RegisterResponse:
        """Check version and model, then hand the device its settings and current prompt."""
        device_id = await self._authenticate(context, request.device_id)
        try:
            check_protocol_version(request.protocol_version)
        except CdcaError as err:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(err))
        if request.model_sha256 not in self.served.accepted_sha256:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION,
                f"device runs model {request.model_sha256[:12] or '(none)'}..., this server adapts "
                f"{self.served.manifest.sha256[:12]}...: download it (cdca device run --bootstrap)",
            )  # fmt: skip
        self.registry.seen(device_id, request.model_sha256)
        log.info("registered %s (model %s)", device_id, request.model_sha256[:12])
        response = cdca_pb2.RegisterResponse(
            protocol_version=PROTOCOL_VERSION, upload_budget=self.device.budget,
            device_settings=self.device_settings,
        )  # fmt: skip
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
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         "register with the served model before uploading")  # fmt: skip
        parts: list[DecodedUpload] = []
        async for chunk in request_iterator:
            parts.append(await self._decode_chunk(context, device_id, chunk, parts))
        if not parts:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "an upload needs >= 1 chunk")
        return self._accept(device_id, parts)

    async def GetPrompt(  # noqa: N802
        self, request: cdca_pb2.PromptRequest, context: grpc.aio.ServicerContext
    ) -> cdca_pb2.Prompt:
        """The newest prompt above ``known_version`` (the device's own or the shared one)."""
        device_id = await self._authenticate(context)
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
        device_id = await self._authenticate(context)
        await self._check_owner(context, device_id, request.device_id)
        known = request.known_version
        while not self.board.closed:
            remaining = context.time_remaining()
            wait = WATCH_WAIT_SECONDS if remaining is None else min(WATCH_WAIT_SECONDS, remaining)
            if wait <= 0:
                return
            prompt = await self.board.wait_newer(device_id, known, wait)
            if prompt is not None:
                known = prompt.version
                yield prompt

    async def DownloadModel(  # noqa: N802
        self, request: cdca_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cdca_pb2.ModelChunk]:
        """The manifest, then the model file and its defaults, in chunks."""
        await self._authenticate(context, request.device_id)
        manifest = self.served.manifest
        yield cdca_pb2.ModelChunk(manifest_json=self.served.manifest_path.read_text())
        names = [manifest.model_file, *([manifest.defaults_file] if manifest.defaults_file else [])]
        for name in names:
            data = self.served.model_bytes() if name == manifest.model_file else (
                (self.served.folder / name).read_bytes())  # fmt: skip
            for offset in range(0, len(data), MODEL_CHUNK_BYTES):
                yield cdca_pb2.ModelChunk(
                    file_name=name, offset=offset, total_size=len(data),
                    data=data[offset : offset + MODEL_CHUNK_BYTES],
                )  # fmt: skip

    async def _authenticate(self, context: grpc.aio.ServicerContext, claimed: str = "") -> str:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        device_id = metadata.get(DEVICE_METADATA, "")
        token = metadata.get(TOKEN_METADATA, "").removeprefix("Bearer ").strip()
        if not device_id or not token:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"missing {DEVICE_METADATA!r} or {TOKEN_METADATA!r} metadata: "
                         "start the device with --device-id and --token")  # fmt: skip
        if not self.registry.is_enrolled(device_id):
            log.warning("refused unknown device %r", device_id)
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"device {device_id!r} is not enrolled on this server: "
                         f"run `cdca cloud enrol --device {device_id}` there")  # fmt: skip
        if not self.registry.authenticate(device_id, token):
            log.warning("refused a bad token for %r", device_id)
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"the token does not match device {device_id!r}")  # fmt: skip
        if claimed and claimed != device_id:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"this call is authenticated as {device_id!r} but names {claimed!r}")  # fmt: skip
        return device_id

    async def _check_owner(
        self, context: grpc.aio.ServicerContext, caller: str, wanted: str
    ) -> None:
        if wanted and wanted != caller:
            log.warning("%s asked for the prompts of %r", caller, wanted)
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"a device reads only its own prompts and {SHARED_PROMPT_ID!r}")  # fmt: skip

    async def _decode_chunk(
        self,
        context: grpc.aio.ServicerContext,
        device_id: str,
        chunk: cdca_pb2.UploadChunk,
        previous: list[DecodedUpload],
    ) -> DecodedUpload:
        if chunk.device_id != device_id:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"upload chunk names device {chunk.device_id!r}, the call is {device_id!r}")  # fmt: skip
        if previous and chunk.batch_id != previous[0].batch_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "one upload stream carries one batch: batch_id changed mid-stream")  # fmt: skip
        if not previous and not chunk.HasField("batch_stats"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "the first chunk of an upload must carry batch_stats")  # fmt: skip
        if sum(len(p.images) for p in previous) + len(chunk.samples) > MAX_SAMPLES_PER_UPLOAD:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"more than {MAX_SAMPLES_PER_UPLOAD} samples in one upload: split it")  # fmt: skip
        try:
            return decode_upload(chunk, self.served.image_shape, self.served.stats_shape,
                                 self.config.max_message_bytes)  # fmt: skip
        except CdcaError as err:
            log.warning("refused an upload from %s: %s", device_id, err)
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))

    def _accept(self, device_id: str, parts: list[DecodedUpload]) -> cdca_pb2.UploadSummary:
        first = parts[0]
        frames_seen = max(p.frames_seen for p in parts)
        images = np.concatenate([p.images for p in parts])
        uncertainty = np.concatenate([p.uncertainty for p in parts])
        record = self.registry.record(device_id)
        assert record is not None  # authenticated above
        allowed = int(self.device.budget * record.frames_after(frames_seen))
        room = max(0, allowed + self.config.upload_slack - record.accepted)
        keep = min(len(images), room)
        refused = len(images) - keep
        shift = any(p.shift for p in parts)
        if keep or shift:
            assert first.batch_stats is not None  # checked on the first chunk
            batch = StoredBatch(device_id, first.batch_id, images[:keep], uncertainty[:keep],
                                first.batch_stats, shift, frames_seen)  # fmt: skip
            self.worker.submit(self.inbox.put(batch))
        self.registry.count_upload(device_id, frames_seen, keep, refused)
        if refused:
            log.warning("%s is over its upload budget: refused %d of %d samples",
                        device_id, refused, len(images))  # fmt: skip
        return cdca_pb2.UploadSummary(accepted=keep, refused_over_budget=refused)


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers
