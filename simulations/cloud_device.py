"""U-VPA in one process: a device (the exported graph, forward only) and its cloud session.

Gan et al., "Cloud-Device Collaborative Adaptation to Continual Changing Environments in
the Real-world" (U-VPA), CVPR 2023 (https://arxiv.org/abs/2212.00972). The device runs
``DeviceModel``, the exact graph ``cdca cloud export`` writes to ONNX (the export's parity
check bounds the difference), with its own batch statistics (forward only, no training)
and the latest prompt the cloud delivered. ``device.sampling`` picks the uploads;
``cloud.adaptation.session`` learns the next prompt. A prompt learned from batch t reaches
the device at batch t + ``delay``. The same pieces run over gRPC and Flower in later
layers; only the transport changes.

Bytes are counted as the wire would carry them: uint8 frames plus a float32 score and an
8-byte frame id per upload, the (2, K) float32 batch statistics once per batch that
uploads, and float32 prompt parts on the way down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from cloud.adaptation.clean_set import CLEAN_SET_MISSING
from cloud.adaptation.prompt_bank import BankConfig, Prompt, PromptBank
from cloud.adaptation.session import AdaptationSession, SessionConfig, UploadBatch
from cloud.adaptation.synthetic import EnvironmentRenderer, SyntheticConfig
from cloud.adaptation.vplu import VPLU, VPLUConfig
from cloud.data.labelled import LabelledImages
from cloud.export.device_model import DeviceModel
from cloud.students.preprocess import Normalization, pixels_to_uint8
from cloud.teacher.companion import MAKE_IT as COMPANION_MAKE_IT
from device.prompt_gate import check_gate, prefers_prompt
from device.sampling import SamplingConfig, UncertaintySampler
from device.uncertainty import perturbed_views
from protocol.errors import ConfigError

UPLOAD_OVERHEAD_BYTES = 4 + 8  # float32 score + int64 frame id per uploaded frame
MESSAGE_OVERHEAD_BYTES = 16  # per message (device id, batch id, shift flag)


@dataclass(frozen=True)
class CloudDeviceWorld:
    """What every cloud-device method shares: the device graph, class vectors and the teacher.

    ``teacher`` maps [0, 1] pixels to the teacher's logits over the device's classes.
    """

    device_model: DeviceModel
    class_vectors: torch.Tensor
    normalization: Normalization
    teacher: Callable[[torch.Tensor], torch.Tensor]
    companion: Callable[[torch.Tensor], torch.Tensor] | None = None  # cloud.teacher.companion
    clean: LabelledImages | None = None  # the cloud's clean labelled set, for synthetic samples

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the device model's input."""
        return self.normalization.apply(pixels)

    @torch.no_grad()
    def teacher_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher's logits over the device's classes."""
        return self.teacher(pixels).float().cpu()


@dataclass(frozen=True)
class UVPAConfig:
    """Every knob of one cloud-device method."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    vplu: VPLUConfig = field(default_factory=VPLUConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    delay: int = 1  # batches between learning a prompt and the device using it
    stat_mix: float = 1.0  # device normalises with its own batch statistics
    companion: bool = False  # the cloud's re-normalised companion joins the ensemble target
    gate: str = "entropy"  # the device's own check on each prompt (device.prompt_gate)
    synthetic: int = 0  # clean images rendered like each environment per update (0: none)

    def __post_init__(self) -> None:
        check_gate(self.gate)
        if self.synthetic < 0:
            raise ConfigError(f"synthetic must be >= 0 samples per update, got {self.synthetic}")


class Traffic:
    """Bytes and frames counted on the way up and down."""

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

    def count_upload(self, frames: torch.Tensor, extra_bytes: int = 0) -> None:
        """One upload message: uint8 frames with their score and id, plus ``extra_bytes``."""
        n = len(frames)
        self.uploaded += n
        self.bytes_up += MESSAGE_OVERHEAD_BYTES + extra_bytes
        self.bytes_up += n * (int(np.prod(frames.shape[1:])) + UPLOAD_OVERHEAD_BYTES)


class UVPAMethod:
    """The device and its cloud session, stepped one batch at a time (predict, then adapt)."""

    uses_backprop = False  # on the device: backprop happens only in the cloud

    def __init__(self, name: str, world: CloudDeviceWorld, config: UVPAConfig) -> None:
        self.name, self.world, self.config = name, world, config
        vplu = VPLU(world.device_model, world.class_vectors, config.vplu)
        if config.companion and world.companion is None:
            raise ConfigError(
                f"{name} needs the companion teacher; create it with `{COMPANION_MAKE_IT}`"
            )
        self.session = AdaptationSession(
            vplu, world.teacher_logits, world.normalize,
            PromptBank(vplu.neutral_prompt(), config.bank), config.session,
            world.companion if config.companion else None, _renderer(name, world, config),
        )  # fmt: skip
        first_norm = world.device_model.norm_layers[0].channels
        self.sampler = UncertaintySampler(config.sampling, signature_channels=first_norm)
        self.view_rng = np.random.default_rng(config.sampling.seed)
        self.inputs = world.device_model.neutral_inputs(world.class_vectors)
        self.inputs["stat_mix"] = torch.full((1,), float(config.stat_mix))
        self.fallback = dict(self.inputs)  # no prompt: what the device answers with when gated
        self.in_flight: deque[tuple[int, Prompt]] = deque()
        self.batch_index = 0
        self.traffic = Traffic()

    @torch.no_grad()
    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict with the prompt in force, upload the chosen frames, let the cloud learn."""
        self._receive_due_prompts()
        self.traffic.frames += len(pixels)
        logits, _, stats = self.world.device_model(
            **{**self.inputs, "x": self.world.normalize(pixels)}
        )
        views = self._view_logits(pixels) if self.sampler.needs_views else []
        decision = self.sampler.decide(logits.numpy(), stats.numpy(), views)
        chosen = torch.from_numpy(decision.indices)
        upload = UploadBatch(
            pixels[chosen], torch.from_numpy(decision.scores), stats, decision.shift
        )
        self._count_up(upload)
        with torch.enable_grad():
            new_prompt = self.session.ingest(upload)
        if new_prompt is not None:  # only the parts the cloud learns ever change
            new_prompt = {k: new_prompt[k] for k in self.config.vplu.parts}
            self.in_flight.append((self.batch_index + self.config.delay, new_prompt))
            self.traffic.bytes_down += MESSAGE_OVERHEAD_BYTES + sum(
                int(v.numel()) * 4 for v in new_prompt.values()
            )
        self.batch_index += 1
        return self._answer(pixels, logits)

    def _answer(self, pixels: torch.Tensor, prompted: torch.Tensor) -> torch.Tensor:
        """The device's prompt gate, as ``device.agent.DeviceAgent`` applies it."""
        if self.config.gate == "off" or all(
            torch.equal(self.inputs[k], v) for k, v in self.fallback.items()
        ):
            return prompted
        x = self.world.normalize(pixels)
        fallback, _, _ = self.world.device_model(**{**self.fallback, "x": x})
        return prompted if prefers_prompt(prompted.numpy(), fallback.numpy()) else fallback

    def _view_logits(self, pixels: torch.Tensor) -> list[np.ndarray]:
        """The device's two extra passes for disagreement, on the same uint8 views it would see."""
        frames = pixels_to_uint8(pixels).permute(0, 2, 3, 1).numpy()
        views = perturbed_views(frames, self.config.sampling.noise_std, self.view_rng)
        out = []
        for view in views:
            x = torch.from_numpy(view).permute(0, 3, 1, 2).float() / 255
            logits, _, _ = self.world.device_model(**{**self.inputs, "x": self.world.normalize(x)})
            out.append(logits.numpy())
        return out

    def costs(self) -> dict[str, float]:
        """Traffic and cloud compute so far."""
        return {**self.traffic.costs(self.session.seconds), "shifts_reported": self.session.shifts,
                "prompts_shipped": self.session.shipped}  # fmt: skip

    def _receive_due_prompts(self) -> None:
        while self.in_flight and self.in_flight[0][0] <= self.batch_index:
            self.inputs.update(self.in_flight.popleft()[1])

    def _count_up(self, upload: UploadBatch) -> None:
        # the batch statistics travel only with a batch that uploads frames
        stats_bytes = int(upload.batch_stats.numel()) * 4 if len(upload.pixels) else 0
        self.traffic.count_upload(upload.pixels, stats_bytes)


def _renderer(name: str, world: CloudDeviceWorld, config: UVPAConfig) -> EnvironmentRenderer | None:
    """The synthetic-sample renderer a method asks for, over the world's clean set."""
    if not config.synthetic:
        return None
    if world.clean is None:
        raise ConfigError(f"{name} renders the clean training set; {CLEAN_SET_MISSING}")
    # the draw of clean images follows the benchmark's --seed (run_method seeds torch before
    # building a method), so repeated seeds measure how much the result owes to that draw
    synthetic = SyntheticConfig(count=config.synthetic, seed=torch.initial_seed())
    return EnvironmentRenderer(world.clean, len(world.class_vectors), synthetic)


class CloudTeacherMethod:
    """The bandwidth-hungry reference: every frame goes up, the teacher's answer comes down."""

    uses_backprop = False

    def __init__(self, name: str, world: CloudDeviceWorld) -> None:
        self.name, self.world = name, world
        self.traffic = Traffic()

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Send the batch, get the teacher's logits back (float32 per class per frame)."""
        logits = self.world.teacher_logits(pixels)
        self.traffic.frames += len(pixels)
        self.traffic.count_upload(pixels)
        self.traffic.bytes_down += MESSAGE_OVERHEAD_BYTES + int(logits.numel()) * 4
        return logits

    def costs(self) -> dict[str, float]:
        """Traffic so far; the cloud's compute is the teacher's forward pass per frame."""
        return self.traffic.costs(0.0)
