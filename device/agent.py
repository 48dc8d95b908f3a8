"""``DeviceAgent``: one device's adaptation loop without any transport; no torch.

Predict a batch under the prompt in force (own batch statistics, ``stat_mix`` = 1, the U-VPA
device configuration), check that the prompt does not make the device less sure than no
prompt (``device.prompt_gate``), score and pick the uploads (UGS, ``device.sampling``), and
build the upload the cloud expects. ``DeviceClient`` (gRPC, threads, disk queue), the
Flower ClientApp and the in-process fleet simulation all wrap this one class, so an engine
changes how uploads and prompts travel, never what the device does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from device.preprocess import as_rgb, resize_bilinear
from device.prompt_gate import prefers_prompt
from device.runtime import DeviceRuntime, Prediction
from device.sampling import UncertaintySampler, UploadDecision
from device.uncertainty import perturbed_views
from protocol.config.adaptation import DeviceSettings
from protocol.upload import Upload


@dataclass(frozen=True)
class AgentStep:
    """What one batch produced: the model's outputs, the answer and the upload decision.

    ``prediction`` is the run under the prompt in force, which the uploads and the batch
    statistics come from; ``logits`` is the device's answer (the fallback run's when the
    prompt gate rejected the prompt for this batch).
    """

    prediction: Prediction
    decision: UploadDecision
    ms: float
    logits: np.ndarray
    used_prompt: bool = True
    passes: int = 1  # model passes over the batch (2: the gate ran the fallback too)

    @property
    def uploads(self) -> bool:
        """Whether this batch sends anything up (frames, or a shift report)."""
        return bool(len(self.decision.indices) or self.decision.shift)


class DeviceAgent:
    """Runtime plus sampler: predict, choose uploads, apply prompts.

    Args:
        runtime: the ONNX model.
        settings: the project's ``[adaptation.device]`` (the cloud sends them at ``Register``).
        seed: this device's seed for its random picks.
    """

    def __init__(
        self, runtime: DeviceRuntime, settings: DeviceSettings | None = None, seed: int = 0
    ) -> None:
        self.runtime, self.settings = runtime, settings or DeviceSettings()
        self._set_stat_mix(self.settings.stat_mix)
        self.fallback = dict(runtime.adaptation)  # no prompt: the shipped defaults
        norm_layers = runtime.manifest.norm_layers
        first_norm = int(norm_layers[0]["channels"]) if norm_layers else 32
        self.sampler = UncertaintySampler(self.settings, first_norm, seed)
        self.view_rng = np.random.default_rng(seed)
        self.trusted_for = 0  # batches the prompt in force still goes without the gate's check

    def configure(self, settings: DeviceSettings) -> None:
        """Switch to new settings between batches (the prompt in force stays)."""
        self.settings = settings
        self._set_stat_mix(settings.stat_mix)
        self.fallback["stat_mix"] = self.runtime.adaptation["stat_mix"]
        self.sampler.reconfigure(settings)

    def _set_stat_mix(self, stat_mix: float) -> None:
        self.runtime.set_adaptation(stat_mix=np.full((1,), stat_mix, np.float32))

    def step(self, images: np.ndarray) -> AgentStep:
        """Predict (N, H, W, 3) uint8 frames and decide what goes up."""
        start = time.perf_counter()
        prediction = self.runtime.predict(images)
        logits, used_prompt, passes = self._answer(images, prediction.logits)
        ms = (time.perf_counter() - start) * 1e3
        views = self._view_logits(images) if self.sampler.needs_views else ()
        decision = self.sampler.decide(prediction.logits, prediction.batch_stats, views)
        if decision.shift:
            self.trusted_for = 0  # a new environment: check the prompt on the next batch
        return AgentStep(prediction, decision, ms, logits, used_prompt, passes)

    def prompted(self) -> bool:
        """Whether a prompt other than the shipped defaults is in force."""
        current = self.runtime.adaptation
        return any(not np.array_equal(current[k], v) for k, v in self.fallback.items())

    def _answer(self, images: np.ndarray, prompted: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """The gate: a second pass without the prompt, kept when it is surer (see prompt_gate).

        A prompt that won its check goes unchecked for ``gate_every - 1`` batches, until a
        new prompt or a shift; one that lost is checked every batch (both passes run anyway).
        Returns the answer, whether it is the prompt's, and the passes it took.
        """
        if self.settings.gate == "off" or not self.prompted():
            return prompted, True, 1
        if self.trusted_for > 0:
            self.trusted_for -= 1
            return prompted, True, 1
        fallback = self.runtime.predict(images, self.fallback).logits
        if prefers_prompt(prompted, fallback):
            self.trusted_for = self.settings.gate_every - 1
            return prompted, True, 2
        return fallback, False, 2

    def apply(self, parts: dict[str, np.ndarray]) -> None:
        """Switch to a prompt (validated by the runtime; a bad one raises and changes nothing)."""
        self.runtime.set_adaptation(**parts)
        self.trusted_for = 0  # a new prompt is checked on its first batch

    def upload(
        self,
        images: np.ndarray,
        step: AgentStep,
        batch_id: int,
        first_frame_id: int,
        frames_seen: int,
    ) -> Upload:
        """The upload of one batch, frames at the model's input size."""
        chosen = step.decision.indices
        size = self.runtime.manifest.preprocess.image_size
        frames = as_rgb(images[chosen])
        small = np.clip(np.rint(resize_bilinear(frames, size)), 0, 255).astype(np.uint8)
        return Upload(
            batch_id=batch_id,
            images=small,
            uncertainty=np.asarray(step.decision.scores, np.float32),
            frame_ids=(first_frame_id + chosen).astype(np.int64),
            predicted=step.prediction.logits[chosen].argmax(1).astype(np.int64),
            batch_stats=np.asarray(step.prediction.batch_stats, np.float32),
            shift=step.decision.shift,
            frames_seen=frames_seen,
        )

    def _view_logits(self, images: np.ndarray) -> list[np.ndarray]:
        """Logits of the mirrored and noisy copies (disagreement scoring: 2 extra passes)."""
        views = perturbed_views(images, self.settings.noise_std, self.view_rng)
        return [self.runtime.predict(view).logits for view in views]
