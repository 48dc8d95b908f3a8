"""Building and checking cdca.v1 messages, shared by the cloud server and the device client.

Prompts are the one thing a device applies without question, so decoding one refuses
anything that is not finite float32; uploads are checked sample by sample against the
shapes the device's manifest promises. Errors are ``TensorError``/``ProtocolError`` with a
message meant for the other side's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocol.errors import CdcaError
from protocol.images import DEFAULT_ENCODING, UploadEncoding, decode_image, encode_image
from protocol.tensors import DEFAULT_MAX_BYTES, decode, encode
from protocol.v1 import cdca_pb2

PROTOCOL_VERSION = 1
SERVICE_NAME = "cdca.v1.CloudAdaptation"  # also the name gRPC health checking reports on
DEVICE_METADATA = "x-cdca-device"  # every call carries the device id ...
TOKEN_METADATA = "authorization"  # ... and "Bearer <token>"
SHARED_PROMPT_ID = "shared"  # PromptRequest.device_id for the shared prompt


def call_metadata(device_id: str, token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a device attaches to every call."""
    return ((DEVICE_METADATA, device_id), (TOKEN_METADATA, f"Bearer {token}"))


class ProtocolError(CdcaError):
    """A message that is well-formed protobuf but breaks the cdca protocol (version, ids)."""


def check_protocol_version(version: int) -> None:
    """Refuse a peer that speaks another protocol version, saying which one to use."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported; this side speaks {PROTOCOL_VERSION} "
            "(upgrade the older of cloud and device)"
        )


def prompt_message(
    parts: Mapping[str, np.ndarray],
    *,
    version: int,
    scope: str = "device",
    environment_id: str = "",
    learned_from_batch: int = 0,
    created_unix_ms: int = 0,
) -> cdca_pb2.Prompt:
    """Prompt parts (float32 arrays by ONNX input name) -> a Prompt message."""
    return cdca_pb2.Prompt(
        version=version,
        scope=scope,
        environment_id=environment_id,
        learned_from_batch=learned_from_batch,
        created_unix_ms=created_unix_ms,
        parts={name: encode(np.asarray(value, np.float32)) for name, value in parts.items()},
    )


@dataclass(frozen=True)
class DecodedPrompt:
    """A prompt that passed every check."""

    version: int
    scope: str
    environment_id: str
    parts: dict[str, np.ndarray]
    learned_from_batch: int = 0
    created_unix_ms: int = 0


def decode_prompt(
    message: cdca_pb2.Prompt,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedPrompt:
    """Check every part against the model's input shapes; float32 and finite only.

    Raises:
        TensorError: a part with the wrong dtype, shape or size, or NaN/Inf values.
        ProtocolError: a part the model has no input for.
    """
    parts: dict[str, np.ndarray] = {}
    for name, tensor in message.parts.items():
        if name not in expected_shapes:
            raise ProtocolError(
                f"prompt part {name!r} is not a model input; known: {', '.join(sorted(expected_shapes))}"
            )
        parts[name] = decode(
            tensor,
            name=f"prompt part {name!r}",
            dtype="float32",
            shape=expected_shapes[name],
            max_bytes=max_bytes,
            finite=True,
        )
    return DecodedPrompt(
        message.version,
        message.scope,
        message.environment_id,
        parts,
        message.learned_from_batch,
        message.created_unix_ms,
    )


@dataclass(frozen=True)
class DecodedUpload:
    """One upload chunk that passed every check."""

    device_id: str
    batch_id: int
    images: np.ndarray  # (n, H, W, 3) uint8
    uncertainty: np.ndarray  # (n,) float32 in [0, 1]
    frame_ids: np.ndarray  # (n,) int64
    predicted: np.ndarray  # (n,) int64
    batch_stats: np.ndarray | None  # (2, K) float32, on the batch's first chunk
    shift: bool
    frames_seen: int
    last: bool = False  # the batch's final chunk
    offered: int = 0  # samples the chunk carried (more than ``images`` when decoding stopped early)


def upload_chunks(
    device_id: str,
    batch_id: int,
    images: np.ndarray,
    uncertainty: np.ndarray,
    frame_ids: np.ndarray,
    predicted: np.ndarray,
    batch_stats: np.ndarray | None,
    *,
    shift: bool,
    frames_seen: int,
    max_chunk_bytes: int = 1024 * 1024,
    encoding: UploadEncoding = DEFAULT_ENCODING,
) -> list[cdca_pb2.UploadChunk]:
    """Split one batch's uploads into chunks under ``max_chunk_bytes``.

    The first chunk carries the statistics (``None``: the cloud reuses the last ones this
    device sent), the last says it is the last: the cloud stores nothing of a stream that
    ends without it. ``encoding``: image files or raw pixels, float16 or float32 statistics.
    """
    per_chunk = max(1, max_chunk_bytes // max(1, images[0].nbytes if len(images) else 1))
    chunks = []
    for first in range(0, max(1, len(images)), per_chunk):
        samples = [
            _sample(images[i], encoding, uncertainty[i], frame_ids[i], predicted[i])
            for i in range(first, min(first + per_chunk, len(images)))
        ]
        chunk = cdca_pb2.UploadChunk(
            device_id=device_id,
            batch_id=batch_id,
            samples=samples,
            shift=shift,
            frames_seen=frames_seen,
        )
        if first == 0 and batch_stats is not None:
            chunk.batch_stats.CopyFrom(encode(wire_stats(batch_stats, encoding)))
        chunks.append(chunk)
    chunks[-1].last = True
    return chunks


def _sample(
    image: np.ndarray,
    encoding: UploadEncoding,
    uncertainty: float,
    frame_id: int,
    predicted: int,
) -> cdca_pb2.Sample:
    sample = cdca_pb2.Sample(
        uncertainty=float(uncertainty), frame_id=int(frame_id), predicted_class=int(predicted)
    )
    if encoding.image_format == "raw":
        sample.image.CopyFrom(encode(image))
    else:
        sample.image_file.CopyFrom(encode_image(image, encoding))
    return sample


def wire_stats(batch_stats: np.ndarray, encoding: UploadEncoding) -> np.ndarray:
    """The statistics as they travel: float16 when asked and every value fits, else float32.

    A float16 that overflows would reach the cloud as Inf and be refused, so values beyond
    its range go as float32 (rare: BatchNorm inputs of a trained network are far smaller).
    """
    stats = np.asarray(batch_stats, np.float32)
    if encoding.stats_dtype == "float16" and np.all(np.abs(stats) <= np.finfo(np.float16).max):
        return stats.astype(np.float16)
    return stats


def _decode_sample_image(
    sample: cdca_pb2.Sample, shape: tuple[int, int, int], max_bytes: int, name: str
) -> np.ndarray:
    """A sample's frame from raw pixels or an image file; exactly one of the two."""
    if sample.HasField("image") == sample.HasField("image_file"):
        raise ProtocolError(
            f"{name}: a sample carries either image or image_file, not both or none"
        )
    if sample.HasField("image_file"):
        return decode_image(sample.image_file, shape, name)
    return decode(sample.image, name=name, dtype="uint8", shape=shape, max_bytes=max_bytes)


def decode_upload(
    chunk: cdca_pb2.UploadChunk,
    image_shape: tuple[int, int, int],
    stats_shape: tuple[int, int],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_samples: int | None = None,
) -> DecodedUpload:
    """Check every sample against the device model's image size, and the statistics if present.

    ``max_samples``: decode only the first so many samples (the receiver would refuse the
    rest anyway, so a flood costs it no decoding); ``offered`` still counts them all.
    """
    samples = chunk.samples[: max_samples if max_samples is not None else len(chunk.samples)]
    n = len(samples)
    images = np.zeros((n, *image_shape), np.uint8)
    uncertainty = np.zeros(n, np.float32)
    for i, sample in enumerate(samples):
        images[i] = _decode_sample_image(sample, image_shape, max_bytes, f"sample {i} image")
        uncertainty[i] = sample.uncertainty
    if not np.all(np.isfinite(uncertainty) & (uncertainty >= 0) & (uncertainty <= 1)):
        raise ProtocolError("uncertainty scores must be finite and in [0, 1]")
    stats = None
    if chunk.HasField("batch_stats"):
        if chunk.batch_stats.dtype not in ("float32", "float16"):
            raise ProtocolError(
                f"batch_stats must be float32 or float16, got {chunk.batch_stats.dtype!r}"
            )
        stats = decode(
            chunk.batch_stats,
            name="batch_stats",
            shape=stats_shape,
            max_bytes=max_bytes,
            finite=True,
        ).astype(np.float32)
    return DecodedUpload(
        device_id=chunk.device_id,
        batch_id=chunk.batch_id,
        images=images,
        uncertainty=uncertainty,
        frame_ids=np.array([s.frame_id for s in samples], np.int64),
        predicted=np.array([s.predicted_class for s in samples], np.int64),
        batch_stats=stats,
        shift=chunk.shift,
        frames_seen=chunk.frames_seen,
        last=chunk.last,
        offered=len(chunk.samples),
    )
