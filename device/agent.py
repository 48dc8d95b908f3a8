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

from device.held_schedule import FALLBACK, PROMPTED, HeldStatistics
from device.preprocess import as_rgb, resize_bilinear
from device.prompt_gate import prefers_prompt
from device.runtime import DeviceRuntime, Prediction
from device.sampling import UncertaintySampler, UploadDecision
from device.uncertainty import perturbed_views
from protocol.config.adaptation import DeviceSettings
from protocol.upload import Upload

GATE_SHARE = 4  # on held statistics the gate checks 1/GATE_SHARE of the batch
# Smaller batches compute their own statistics and hold none: opening the held graph's
# sessions (two per refresh) costs about as much as a dozen frames of the statistics graph,
# and a few frames' statistics are too noisy to hold.
HELD_MIN_BATCH = 32


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
    passes: float = 1.0  # model passes over the batch (2: the gate ran the fallback too)
    fresh_stats: bool = True  # computed its statistics (False: ran on held ones)

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
        self.held = self._held_statistics()

    def configure(self, settings: DeviceSettings) -> None:
        """Switch to new settings between batches (the prompt in force stays)."""
        self.settings = settings
        self._set_stat_mix(settings.stat_mix)
        self.fallback["stat_mix"] = self.runtime.adaptation["stat_mix"]
        self.sampler.reconfigure(settings)
        self.held = self._held_statistics()

    def _held_statistics(self) -> HeldStatistics | None:
        """Held statistics between computed ones, when the settings and the model allow them."""
        settings, model = self.settings, self.runtime.held
        if settings.stats_every == 1 or settings.stat_mix != 1 or model is None:
            return None  # a blend with reference statistics needs the statistics graph
        return HeldStatistics(model, settings.stats_every, settings.shift_sensitivity)

    def _set_stat_mix(self, stat_mix: float) -> None:
        self.runtime.set_adaptation(stat_mix=np.full((1,), stat_mix, np.float32))

    def step(self, images: np.ndarray) -> AgentStep:
        """Predict (N, H, W, 3) uint8 frames and decide what goes up."""
        start = time.perf_counter()
        x = self.runtime.prepare(images)
        held = self.held
        if held is not None and len(x) < HELD_MIN_BATCH:
            held.forget()  # the next large batch computes its own
            held = None
        norm_affine = self.runtime.adaptation["norm_affine"]
        fresh = held is None or held.due(x, self._gate_due(), norm_affine)
        if fresh:
            prediction = self.runtime.predict_input(x)
            logits, used_prompt, passes, fallback_stats = self._answer(x, prediction.logits)
            if held is not None:
                held.refreshed(prediction.batch_stats, fallback_stats, norm_affine)
        else:
            assert held is not None
            prediction, logits, used_prompt, passes = self._held_answer(x, held)
            held.passed()
        ms = (time.perf_counter() - start) * 1e3
        views = self._view_logits(images) if self.sampler.needs_views else ()
        stats = prediction.batch_stats if fresh else None
        decision = self.sampler.decide(prediction.logits, stats, views)
        if decision.shift:
            self.trusted_for = 0  # a new environment: check the prompt on the next batch
        return AgentStep(prediction, decision, ms, logits, used_prompt, passes, fresh)

    def prompted(self) -> bool:
        """Whether a prompt other than the shipped defaults is in force."""
        current = self.runtime.adaptation
        return any(not np.array_equal(current[k], v) for k, v in self.fallback.items())

    def _gate_due(self) -> bool:
        """Whether the gate checks this batch (a prompt in force and not trusted)."""
        return self.settings.gate != "off" and self.prompted() and self.trusted_for == 0

    def _gate_skips(self) -> bool:
        """Whether this batch goes unchecked (one batch fewer for a trusted prompt)."""
        if self._gate_due():
            return False
        self.trusted_for = max(0, self.trusted_for - 1)
        return True

    def _answer(
        self, x: np.ndarray, prompted: np.ndarray
    ) -> tuple[np.ndarray, bool, float, np.ndarray | None]:
        """The gate: a second pass without the prompt, kept when it is surer (see prompt_gate).

        A prompt that won its check goes unchecked for ``gate_every - 1`` batches, until a
        new prompt or a shift; one that lost is checked every batch (both passes run anyway).
        Returns the answer, whether it is the prompt's, the passes it took and the
        fallback run's statistics (None: no fallback ran).
        """
        if self._gate_skips():
            return prompted, True, 1.0, None
        fallback = self.runtime.predict_input(x, self.fallback)
        if prefers_prompt(prompted, fallback.logits):
            self.trusted_for = self.settings.gate_every - 1
            return prompted, True, 2.0, fallback.batch_stats
        return fallback.logits, False, 2.0, fallback.batch_stats

    def _held_answer(
        self, x: np.ndarray, held: HeldStatistics
    ) -> tuple[Prediction, np.ndarray, bool, float]:
        """The batch on held statistics; the gate decides from a quarter of it.

        Held statistics make each frame's answer independent of the rest of the batch, so
        the fallback can run on the first quarter alone; only when the prompt loses there
        does the rest run without it too.
        """
        current = self.runtime.adaptation
        session = held.session(PROMPTED, current["norm_affine"])
        logits, embedding = held.model.run(session, x, current)
        prediction = Prediction(logits, embedding, held.stats[PROMPTED])
        if self._gate_skips():
            return prediction, logits, True, 1.0
        fallback_session = held.session(FALLBACK, self.fallback["norm_affine"])
        checked = len(x) // GATE_SHARE  # at least HELD_MIN_BATCH // GATE_SHARE frames
        head, _ = held.model.run(fallback_session, x[:checked], self.fallback)
        if prefers_prompt(logits[:checked], head):
            self.trusted_for = self.settings.gate_every - 1
            return prediction, logits, True, 1 + checked / len(x)
        rest, _ = held.model.run(fallback_session, x[checked:], self.fallback)
        return prediction, np.concatenate([head, rest]), False, 2.0

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
