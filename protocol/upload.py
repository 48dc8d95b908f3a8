"""One device upload as a typed value: what a device sends for one batch, on any transport.

The gRPC path splits it into ``UploadChunk`` messages (``Upload.chunks``); the device's
on-disk queue and Flower's ``ArrayRecord`` carry it as named arrays (``Upload.arrays``), the
same names in both, so a queued upload written by one release reads back in the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocol.images import DEFAULT_ENCODING, UploadEncoding
from protocol.messages import ProtocolError, decode_upload, upload_chunks
from protocol.v1 import cdca_pb2

ARRAY_FIELDS = ("images", "uncertainty", "frame_ids", "predicted", "batch_stats")
SCALAR_FIELDS = ("batch_id", "shift", "frames_seen")


@dataclass(frozen=True)
class Upload:
    """The frames a device chose from one batch, with the batch's statistics."""

    batch_id: int
    images: np.ndarray  # (n, H, W, 3) uint8, at the device model's input size
    uncertainty: np.ndarray  # (n,) float32 in [0, 1]
    frame_ids: np.ndarray  # (n,) int64, the frames' positions in the device's stream
    predicted: np.ndarray  # (n,) int64, the device's predicted class per frame
    batch_stats: np.ndarray  # (2, K) float32: the whole batch's BatchNorm means and variances
    shift: bool  # the device saw its input distribution change at this batch
    frames_seen: int  # frames the device has seen so far, this batch included

    def chunks(
        self,
        device_id: str,
        max_chunk_bytes: int = 1024 * 1024,
        encoding: UploadEncoding = DEFAULT_ENCODING,
        with_stats: bool = True,
    ) -> list[cdca_pb2.UploadChunk]:
        """The gRPC messages of this upload (``protocol.messages.upload_chunks``).

        ``with_stats=False`` leaves the statistics out: the cloud reuses the last ones it has.
        """
        return upload_chunks(
            device_id,
            self.batch_id,
            self.images,
            self.uncertainty,
            self.frame_ids,
            self.predicted,
            self.batch_stats if with_stats else None,
            shift=self.shift,
            frames_seen=self.frames_seen,
            max_chunk_bytes=max_chunk_bytes,
            encoding=encoding,
        )

    def wire_bytes(self, device_id: str, encoding: UploadEncoding = DEFAULT_ENCODING) -> int:
        """What this upload costs on the gRPC wire."""
        return sum(chunk.ByteSize() for chunk in self.chunks(device_id, encoding=encoding))

    def as_received(
        self, device_id: str, encoding: UploadEncoding, known_stats: np.ndarray | None = None
    ) -> tuple[Upload, int]:
        """What the cloud decodes from this upload's messages, and their wire bytes.

        In-process fleets hand uploads to the cloud without gRPC; this gives them what the
        cloud would see (lossy images, float16 statistics) and what the wire would carry.
        ``known_stats``: the statistics the cloud already holds for this device, sent in
        their place (None: send these).
        """
        chunks = self.chunks(device_id, encoding=encoding, with_stats=known_stats is None)
        shape = tuple(self.images.shape[1:])
        parts = [decode_upload(c, shape, tuple(self.batch_stats.shape)) for c in chunks]
        stats = parts[0].batch_stats if known_stats is None else known_stats
        assert stats is not None  # sent on the first chunk when not known
        received = Upload(
            batch_id=self.batch_id,
            images=np.concatenate([p.images for p in parts]),
            uncertainty=self.uncertainty,
            frame_ids=self.frame_ids,
            predicted=self.predicted,
            batch_stats=stats,
            shift=self.shift,
            frames_seen=self.frames_seen,
        )
        return received, sum(chunk.ByteSize() for chunk in chunks)

    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays (scalars as 0-d arrays) for an ``.npz`` file or a Flower ``ArrayRecord``."""
        out = {name: np.ascontiguousarray(getattr(self, name)) for name in ARRAY_FIELDS}
        out["batch_id"] = np.array(self.batch_id, np.int64)
        out["shift"] = np.array(self.shift, np.bool_)
        out["frames_seen"] = np.array(self.frames_seen, np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Upload:
        """The inverse of ``arrays``; a missing field raises ``ProtocolError``."""
        missing = [k for k in (*ARRAY_FIELDS, *SCALAR_FIELDS) if k not in arrays]
        if missing:
            raise ProtocolError(f"upload is missing {', '.join(missing)}")
        return cls(
            batch_id=int(arrays["batch_id"]),
            images=np.asarray(arrays["images"]),
            uncertainty=np.asarray(arrays["uncertainty"], np.float32),
            frame_ids=np.asarray(arrays["frame_ids"], np.int64),
            predicted=np.asarray(arrays["predicted"], np.int64),
            batch_stats=np.asarray(arrays["batch_stats"], np.float32),
            shift=bool(arrays["shift"]),
            frames_seen=int(arrays["frames_seen"]),
        )
