"""``DeviceRuntime``: the exported student in onnxruntime, checked against its manifest; no torch.

The device verifies the model's SHA-256 before opening it, preprocesses exactly as the
manifest says, and validates every adaptation input (shape, dtype, finiteness) before it
reaches the model: a bad prompt from anywhere is refused, the last good one stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from device.held_stats import HeldStatisticsModel
from device.preprocess import preprocess
from protocol.errors import DataError
from protocol.manifest import ModelManifest, load_manifest, verify_model_file

IMAGE_INPUT = "x"


@dataclass(frozen=True)
class Prediction:
    """Model outputs for one batch: (N, C) logits, (N, D) embeddings, (2, K) BatchNorm batch stats."""

    logits: np.ndarray
    embedding: np.ndarray
    batch_stats: np.ndarray


class DeviceRuntime:
    """An onnxruntime session plus the adaptation inputs currently in force."""

    def __init__(
        self,
        manifest: ModelManifest,
        session: ort.InferenceSession,
        defaults: dict[str, np.ndarray],
        held: HeldStatisticsModel | None = None,
    ):
        self.manifest = manifest
        self.session = session
        self.defaults = defaults
        self.adaptation = dict(defaults)
        self.held = held  # the held-statistics graph, when the model folder has one

    @classmethod
    def load(
        cls,
        manifest_path: str | Path,
        threads: int = 2,
        providers: list[str] | None = None,
    ) -> DeviceRuntime:
        """Open the model a manifest describes, after checking its hash.

        ``providers``: onnxruntime execution providers in order of preference (default: CPU).
        """
        manifest_path = Path(manifest_path)
        manifest = load_manifest(manifest_path)
        model_path = verify_model_file(manifest, manifest_path.parent / manifest.model_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(model_path),
            options,
            providers=providers or ["CPUExecutionProvider"],
            disabled_optimizers=manifest.disabled_optimizers,
        )
        defaults = _load_defaults(manifest, manifest_path.parent)
        held = None
        if manifest.held is not None:
            held = HeldStatisticsModel(
                manifest, manifest_path.parent, threads, providers or ["CPUExecutionProvider"]
            )
        return cls(manifest, session, defaults, held)

    def set_adaptation(self, **inputs: np.ndarray) -> None:
        """Replace some adaptation inputs (prompt, norm_affine, ...) after validating them all."""
        checked = {name: self._check_input(name, value) for name, value in inputs.items()}
        self.adaptation.update(checked)

    def reset_adaptation(self) -> None:
        """Back to the shipped defaults (the unadapted student)."""
        self.adaptation = dict(self.defaults)

    def predict(
        self, images: np.ndarray, adaptation: dict[str, np.ndarray] | None = None
    ) -> Prediction:
        """(N, H, W, 3) uint8 frames -> outputs under the current adaptation (or ``adaptation``).

        ``adaptation`` must be complete and already checked (e.g. a copy of ``adaptation``
        taken earlier); it serves a one-off pass and leaves the current one in force.
        """
        return self.predict_input(self.prepare(images), adaptation)

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> the model's (N, 3, S, S) float32 input."""
        return preprocess(images, self.manifest.preprocess)

    def predict_input(
        self, x: np.ndarray, adaptation: dict[str, np.ndarray] | None = None
    ) -> Prediction:
        """``predict`` for an input ``prepare`` made."""
        names = ["logits", "embedding", "batch_stats"]
        inputs = self.adaptation if adaptation is None else adaptation
        logits, embedding, stats = self.session.run(names, {**inputs, IMAGE_INPUT: x})
        return Prediction(logits, embedding, stats)

    def _check_input(self, name: str, value: np.ndarray) -> np.ndarray:
        if name == IMAGE_INPUT:
            raise DataError("images go through predict(), not set_adaptation()")
        spec = self.manifest.input(name)
        array = np.asarray(value)
        if array.dtype != np.dtype(spec.dtype):
            raise DataError(f"{name} must be {spec.dtype}, got {array.dtype}")
        fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)]
        if array.ndim != len(spec.shape) or any(array.shape[i] != d for i, d in fixed):
            raise DataError(f"{name} must have shape {spec.shape}, got {array.shape}")
        if not np.isfinite(array).all():
            raise DataError(
                f"{name} contains NaN or Inf; refusing it and keeping the last good value"
            )
        return array


def _load_defaults(manifest: ModelManifest, folder: Path) -> dict[str, np.ndarray]:
    if manifest.defaults_file is None:
        raise DataError(
            "manifest names no defaults_file; re-export the model with `cdca cloud export`"
        )
    path = folder / manifest.defaults_file
    if not path.is_file():
        raise DataError(f"defaults file {path} named by the manifest is missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            defaults = {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as err:
        raise DataError(f"{path} is not a readable .npz: {err}") from err
    expected = {spec.name for spec in manifest.inputs} - {IMAGE_INPUT}
    if set(defaults) != expected:
        raise DataError(f"{path} holds {sorted(defaults)}, the manifest expects {sorted(expected)}")
    return defaults
