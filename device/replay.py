"""``ReplayDevice``: a device walking through a labelled stream file, batch by batch; no torch.

Fleet simulations (in one process, or one Flower node per device) replay recorded streams
instead of a camera. Each batch is predicted under the prompt in force, scored against
its labels, and turned into the upload the cloud would receive. Bytes are counted as the
gRPC wire would carry them (the protobuf size of the upload chunks and of the prompt).

Stream files hold ``images`` (N, H, W, 3) uint8, ``labels`` (N,) and ``domain`` (N,).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from device.agent import AgentStep, DeviceAgent
from device.sources import batch_starts
from device.stats_sender import StatsSender
from protocol.errors import DataError
from protocol.messages import prompt_message
from protocol.upload import Upload


@dataclass(frozen=True)
class BatchRecord:
    """What one batch did, for the report."""

    batch: int
    domain: int
    frames: int
    correct: int
    uploaded: int
    shift: bool
    bytes_up: int
    prompt_version: int

    def to_json(self) -> dict[str, int | bool]:
        """Plain dict."""
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> BatchRecord:
        """A record from ``to_json`` (or a Flower ConfigRecord of it), checked.

        It may come from a device, and the report divides by its frames. A missing field
        raises KeyError, a value that is not a count DataError.
        """
        v: dict[str, int] = {}
        for name in cls.__dataclass_fields__:
            value = record[name]
            if not isinstance(value, int | float):  # bool is an int
                raise DataError(f"batch record field {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise DataError(f"batch record field {name!r} must be a count, got {value!r}")
            v[name] = int(value)
        if v["frames"] < 1 or v["correct"] > v["frames"] or v["uploaded"] > v["frames"]:
            raise DataError(f"batch record counts do not add up: {v}")
        return cls(
            v["batch"],
            v["domain"],
            v["frames"],
            v["correct"],
            v["uploaded"],
            bool(v["shift"]),
            v["bytes_up"],
            v["prompt_version"],
        )


def step_and_upload(
    agent: DeviceAgent,
    device_id: str,
    images: np.ndarray,
    batch: int,
    first_frame: int,
    sender: StatsSender | None = None,
) -> tuple[AgentStep, Upload | None, int]:
    """One batch: the agent's step, its upload as the cloud decodes it, and its wire bytes.

    The upload is None when nothing goes up; bytes are in the agent's upload encoding.
    ``sender``: leaves out statistics the cloud already holds, as a gRPC link does (its
    upload then carries the held ones, which the cloud would use); None: always sent.
    """
    step = agent.step(images)
    if not step.uploads:
        return step, None, 0
    upload = agent.upload(images, step, batch, first_frame, first_frame + len(images))
    encoding = agent.settings.encoding
    known = None
    if sender is not None:
        sender.resend_distance = encoding.stats_resend_distance
        if not sender.include(upload.batch_stats, upload.shift):
            known = sender.held
        sender.acknowledged(upload.batch_stats, known is None)
    received, wire_bytes = upload.as_received(device_id, encoding, known)
    return step, received, wire_bytes


def prompt_bytes(parts: dict[str, np.ndarray], version: int) -> int:
    """What a prompt takes on the wire (its protobuf message)."""
    return int(prompt_message(parts, version=version).ByteSize())


@lru_cache(maxsize=8)
def _load_stream(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stream file's arrays, read once per version of the file.

    A Flower node builds a ``ReplayDevice`` for every message; without the cache each
    message would read the whole stream again. ``mtime_ns`` and ``size`` are only cache keys.
    """
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"], data["domain"]


class ReplayDevice:
    """The agent plus its stream, its position and the prompt version in force."""

    def __init__(self, agent: DeviceAgent, stream: Path, batch_size: int, device_id: str) -> None:
        self.agent, self.batch_size, self.device_id = agent, batch_size, device_id
        if not stream.is_file():
            raise DataError(f"stream file {stream} is missing; write it with `cdca simulate`")
        info = stream.stat()
        self.images, self.labels, self.domain = _load_stream(
            str(stream), info.st_mtime_ns, info.st_size
        )
        self.starts = batch_starts(self.domain, batch_size)
        self.prompt_version = 0
        self.stats_sender = StatsSender(agent.settings.stats_resend_distance)

    @property
    def num_batches(self) -> int:
        """Batches in the whole stream."""
        return len(self.starts) - 1

    def apply(self, parts: dict[str, np.ndarray], version: int) -> int:
        """Switch to a prompt; returns the bytes it took on the wire."""
        self.agent.apply(parts)
        self.prompt_version = version
        return prompt_bytes(parts, version)

    def run(self, batch: int) -> tuple[BatchRecord, Upload | None]:
        """Predict one batch; returns its record and its upload (None: nothing goes up)."""
        start, stop = self.starts[batch], self.starts[batch + 1]
        images, labels = self.images[start:stop], self.labels[start:stop]
        step, upload, bytes_up = step_and_upload(
            self.agent, self.device_id, images, batch, start, self.stats_sender
        )
        correct = int((step.logits.argmax(1) == labels).sum())
        record = BatchRecord(
            batch,
            int(self.domain[start]),
            len(images),
            correct,
            len(step.decision.indices),
            step.decision.shift,
            bytes_up,
            self.prompt_version,
        )
        return record, upload

    def state(self) -> bytes:
        """What must survive between two calls in a fresh process (a Flower node's ClientApp)."""
        return pickle.dumps(
            (
                self.agent.sampler,
                self.agent.view_rng,
                self.agent.runtime.adaptation,
                self.prompt_version,
                self.stats_sender,
            )
        )

    def restore(self, state: bytes) -> None:
        """Take back ``state()`` written by this same node (never data from elsewhere)."""
        sampler, rng, adaptation, version, sender = pickle.loads(state)  # noqa: S301 - own state
        self.agent.sampler, self.agent.view_rng = sampler, rng
        self.agent.runtime.adaptation, self.prompt_version = adaptation, version
        self.stats_sender = sender
