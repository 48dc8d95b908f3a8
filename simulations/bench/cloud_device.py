"""U-VPA in the benchmark: the real ONNX device and the real cloud, stepped batch by batch.

Gan et al., "Cloud-Device Collaborative Adaptation to Continual Changing Environments in
the Real-world" (U-VPA), CVPR 2023 (https://arxiv.org/abs/2212.00972). ``FleetMethod`` is a
fleet of one, run the way ``cdca simulate``'s in-process engine runs every device: the
``DeviceAgent`` predicts each batch with the exported ONNX model under the prompt in force
(its own batch statistics, forward only), picks its uploads and hands them to the cloud's
``FleetCloud``; a prompt learned from batch t reaches the device at batch t + ``delay``.
Bytes are the protobuf sizes of the upload chunks and prompts, as on the wire.

The cloud and the device's upload rule are parts: CEMA's cloud and its filter
(``simulations.peers.cema``) plug into the same device and wire, alone or crossed with
U-VPA's. Two references sit beside it: ``CloudTeacherMethod`` uploads every frame and answers with
the teacher, and ``label_target`` is U-VPA whose cloud learns from the uploads' true labels
(an upper reference, not a method: the benchmark reveals each batch's labels right before
the step, and the device has predicted that batch before any prompt learned from it can
arrive).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cloud.server.models import CloudModels
from cloud.students.preprocess import pixels_to_uint8
from device.agent import DeviceAgent
from device.replay import prompt_bytes, step_and_upload
from device.runtime import DeviceRuntime
from device.sampling import UncertaintySampler
from device.stats_sender import StatsSender
from protocol.config.adaptation import AdaptationConfig
from protocol.errors import DataError
from protocol.images import DEFAULT_ENCODING, UploadEncoding
from protocol.manifest import MANIFEST_FILE
from protocol.messages import upload_chunks
from protocol.upload import Upload
from simulations.harness.simulated_cloud import SimulatedCloud

DEVICE_ID = "device-0"
# softmax of a one-hot logit of 8 over 10 classes puts 99.7 % on the label: a hard target
# that keeps the KL finite
LABEL_LOGIT = 8.0


def every_frame_bytes(
    device_id: str,
    batch_id: int,
    frames: np.ndarray,
    frame_ids: np.ndarray,
    frames_seen: int,
    encoding: UploadEncoding,
) -> int:
    """Wire bytes of sending every frame of a batch for cloud inference (no statistics)."""
    count = len(frames)
    chunks = upload_chunks(
        device_id,
        batch_id,
        frames,
        np.zeros(count, np.float32),
        frame_ids,
        np.zeros(count, np.int64),
        np.zeros((2, 0), np.float32),
        shift=False,
        frames_seen=frames_seen,
        encoding=encoding,
    )
    return sum(chunk.ByteSize() for chunk in chunks)


class Traffic:
    """Frames, uploads and wire bytes in both directions."""

    def __init__(self) -> None:
        self.frames = self.uploaded = self.bytes_up = self.bytes_down = 0

    def costs(self, cloud_seconds: float) -> dict[str, float]:
        """Per-1,000-frame traffic, upload share and cloud compute per uploaded frame."""
        per_k = 1000 / max(1, self.frames)
        return {
            "upload_fraction": self.uploaded / max(1, self.frames),
            "bytes_up_per_1000": self.bytes_up * per_k,
            "bytes_down_per_1000": self.bytes_down * per_k,
            "cloud_ms_per_upload": 1000 * cloud_seconds / max(1, self.uploaded),
        }


Learned = tuple[dict[str, np.ndarray], int]  # prompt parts and their version


class Cloud(Protocol):
    """What the device talks to: an upload in, maybe new prompt parts out."""

    def ingest(self, device_id: str, upload: Upload) -> Learned | None:
        """Learn from one upload."""
        ...


class FleetMethod:
    """One ONNX device and its cloud, in this process (predict, upload, learn, deliver).

    ``cloud``: None builds the project's U-VPA cloud; any ``Cloud`` (CEMA's) replaces it, and
    one with an ``idle()`` is called on every batch that did not reach it. ``sampler``
    replaces the device's upload rule (UGS). ``hyperparameters`` go into the run's record.
    ``manifest``: the device's model (default: the served fp32 one).
    """

    uses_backprop = False  # on the device: backprop happens only in the cloud

    def __init__(
        self,
        name: str,
        cloud_models: CloudModels,
        adaptation: AdaptationConfig,
        delay: int = 1,
        seed: int = 0,
        label_target: bool = False,
        cloud: Cloud | None = None,
        sampler: UncertaintySampler | None = None,
        hyperparameters: dict[str, object] | None = None,
        manifest: Path | None = None,
    ) -> None:
        self.name, self.delay = name, delay
        self.wants_labels = label_target
        manifest = manifest or cloud_models.served.folder / MANIFEST_FILE
        runtime = DeviceRuntime.load(manifest, threads=1)
        self.agent = DeviceAgent(runtime, adaptation.device, seed)
        if sampler is not None:
            self.agent.sampler = sampler
        self._labels: dict[bytes, int] = {}
        teacher = self._label_logits if label_target else None
        self.cloud = cloud or SimulatedCloud.build(cloud_models, adaptation, teacher)
        self.num_classes = len(cloud_models.class_vectors)
        self.in_flight: deque[tuple[int, dict[str, np.ndarray], int]] = deque()
        self.stats_sender = StatsSender(adaptation.device.stats_resend_distance)
        self.batch = 0
        self.traffic = Traffic()
        self.forwards = 0.0  # frame-passes of the device model (the gate's second pass included)
        self.gated = self.gate_fallbacks = 0  # batches the gate checked, and answered without
        self.cloud_seconds = 0.0
        self.model_bytes = (manifest.parent / runtime.manifest.model_file).stat().st_size
        device = adaptation.device
        self.hyperparameters = {
            "budget": device.budget,
            "score": device.score,
            "gate": device.gate,
            **(hyperparameters or {"cloud": "the project's [adaptation] (config.toml)"}),
        }

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict with the prompt in force, upload the chosen frames, let the cloud learn."""
        while self.in_flight and self.in_flight[0][0] <= self.batch:
            _, parts, version = self.in_flight.popleft()
            self.agent.apply(parts)
            self.traffic.bytes_down += prompt_bytes(parts, version)
        frames = pixels_to_uint8(pixels).permute(0, 2, 3, 1).numpy()
        step, upload, bytes_up = step_and_upload(
            self.agent, DEVICE_ID, frames, self.batch, self.traffic.frames, self.stats_sender
        )
        self.traffic.frames += len(frames)
        self.forwards += len(frames) * step.passes
        self.gated += step.passes > 1
        self.gate_fallbacks += not step.used_prompt
        start = time.perf_counter()
        learned = None
        if upload is not None:
            self.traffic.uploaded += len(step.decision.indices)
            self.traffic.bytes_up += bytes_up
            with torch.enable_grad():
                learned = self.cloud.ingest(DEVICE_ID, upload)
        idle = getattr(self.cloud, "idle", None)
        if learned is None and idle is not None:
            with torch.enable_grad():
                learned = idle()
        if learned is not None:
            self.in_flight.append((self.batch + self.delay, *learned))
        self.cloud_seconds += time.perf_counter() - start
        self.batch += 1
        return torch.from_numpy(step.logits)

    def reveal_labels(self, pixels: torch.Tensor, labels: np.ndarray) -> None:
        """The labels of the batch about to be stepped on (the label-target reference only)."""
        frames = pixels_to_uint8(pixels).numpy()
        self._labels = {f.tobytes(): int(y) for f, y in zip(frames, labels, strict=True)}

    def costs(self) -> dict[str, float]:
        """Traffic, cloud compute (wall time of its calls), device passes and memory so far."""
        prompt = sum(v.nbytes for v in self.agent.runtime.adaptation.values())
        costs = {
            **self.traffic.costs(self.cloud_seconds),
            "device_forwards_per_frame": self.forwards / max(1, self.traffic.frames),
            "gate_fallback_share": self.gate_fallbacks / max(1, self.gated),
            "device_backwards_per_frame": 0.0,
            "device_state_mb": (self.model_bytes + prompt) / 2**20,
            "device_activations_mb": 0.0,
        }
        if isinstance(self.cloud, SimulatedCloud):
            sessions = self.cloud.cloud.sessions.values()
            costs["shifts_reported"] = sum(s.shifts for s in sessions)
            costs["prompts_shipped"] = sum(s.shipped for s in sessions)
        return costs

    def _label_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(pixels), self.num_classes)
        for i, frame in enumerate(pixels_to_uint8(pixels).numpy()):
            label = self._labels.get(frame.tobytes())
            if label is None:
                raise DataError(
                    f"{self.name} got an upload whose label was not revealed; "
                    "call reveal_labels(pixels, labels) before step(pixels)"
                )
            logits[i, label] = LABEL_LOGIT
        return logits


class CloudTeacherMethod:
    """The bandwidth-hungry reference: every frame goes up, the teacher's answer comes down.

    Frames travel in the project's upload encoding, as U-VPA's do, so the two compare fairly.
    """

    uses_backprop = False

    def __init__(
        self, name: str, cloud_models: CloudModels, encoding: UploadEncoding = DEFAULT_ENCODING
    ) -> None:
        self.name, self.cloud_models, self.encoding = name, cloud_models, encoding
        self.traffic = Traffic()

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Send the batch, get the teacher's logits back (float32 per class per frame)."""
        frames = pixels_to_uint8(pixels).permute(0, 2, 3, 1).numpy()
        logits = self.cloud_models.teacher_logits(pixels)
        count = len(frames)
        self.traffic.bytes_up += every_frame_bytes(
            DEVICE_ID,
            self.traffic.frames // count,
            frames,
            np.arange(count),
            self.traffic.frames + count,
            self.encoding,
        )
        self.traffic.frames += count
        self.traffic.uploaded += count
        self.traffic.bytes_down += 4 * int(logits.numel()) + 16  # float32 logits and a header
        return logits

    def costs(self) -> dict[str, float]:
        """Traffic so far; the cloud's compute is the teacher's forward pass per frame."""
        return self.traffic.costs(0.0)
