"""``HeldStatisticsModel``: the student normalising with statistics the device holds; no torch.

The device graph computes every BatchNorm's batch statistics on every batch (1.7x the plain
student's time on a 2-core Xeon at batch 64). Within one environment those statistics
barely move, so a device can compute them on some batches and, in between, run the
held-statistics graph the cloud exports (``protocol.manifest.HeldGraph``): its BatchNorm
weight, bias, mean and variance are initializers this class replaces when it opens a
session (about 4 ms), after which onnxruntime folds them into the convolutions and a
batch costs what the plain student costs. The answer equals the device graph's with
``norm_stats`` replaying the held statistics, which is how the cloud replays them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from protocol.errors import DataError
from protocol.held_graph import HELD_INPUTS, held_initializers, prompted_affine, read_held_data
from protocol.manifest import HeldGraph, ModelManifest, verify_file


class HeldStatisticsModel:
    """Opens sessions of the held graph for a prompt and statistics (``session``), and runs them."""

    def __init__(
        self,
        manifest: ModelManifest,
        folder: Path,
        threads: int,
        providers: list[str],
    ) -> None:
        held = manifest.held
        if held is None:
            raise DataError("this model has no held-statistics graph; re-export it")
        self.held: HeldGraph = held
        self.model_path = verify_file(folder / held.model_file, held.sha256)
        self.slices = [(int(n["offset"]), int(n["channels"])) for n in manifest.norm_layers]
        data = verify_file(folder / held.data_file, held.data_sha256)
        # the source BatchNorms' weight and bias, (2, K) in norm_layers order
        self.source_affine = read_held_data(data, self.slices)[:2]
        self.threads, self.providers = threads, providers

    def session(self, norm_affine: np.ndarray, stats: np.ndarray) -> ort.InferenceSession:
        """A session normalising with ``stats`` (2, K) and the prompt's ``norm_affine`` (2, K)."""
        weight, bias = self.source_affine
        affine = prompted_affine(weight, bias, norm_affine)
        values = held_initializers(self.held, self.slices, np.concatenate([affine, stats]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        ort_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in values.values()]
        options.add_external_initializers(list(values), ort_values)
        return ort.InferenceSession(str(self.model_path), options, providers=self.providers)

    @staticmethod
    def run(
        session: ort.InferenceSession, x: np.ndarray, adaptation: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embedding) of preprocessed ``x`` under the prompt's other inputs."""
        feeds = {name: adaptation[name] for name in HELD_INPUTS[1:]}
        logits, embedding = session.run(["logits", "embedding"], {**feeds, "x": x})
        return logits, embedding
