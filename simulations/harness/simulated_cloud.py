"""The cloud as a simulated device sees it: a device's ``Upload`` in, prompt parts out.

Every engine builds the cloud here: the in-process loop and the Flower ServerApp call
``SimulatedCloud.ingest`` with a device's ``Upload`` and get back the prompt
parts to send, already as float32 NumPy arrays the device runtime accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from cloud.adaptation.fleet import FleetCloud
from cloud.adaptation.session import UploadBatch
from cloud.server.models import CloudModels
from cloud.students.preprocess import pixels_from_uint8
from protocol.config.adaptation import AdaptationConfig
from protocol.upload import Upload


@dataclass
class SimulatedCloud:
    """``FleetCloud`` plus per-device prompt versions, speaking NumPy on both sides."""

    cloud: FleetCloud
    parts: tuple[str, ...]
    versions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cloud_models: CloudModels,
        adaptation: AdaptationConfig | None = None,
        teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> SimulatedCloud:
        """One cloud for the whole fleet, with ``adaptation`` (default: the project's).

        ``teacher``: pixels -> logits in place of the project's teacher (a reference row).
        """
        adaptation = adaptation or cloud_models.adaptation
        return cls(cloud_models.new_fleet(adaptation, teacher), tuple(adaptation.vplu.parts))

    def ingest(self, device_id: str, upload: Upload) -> tuple[dict[str, np.ndarray], int] | None:
        """One device upload -> the prompt parts to ship and their version (None: no new prompt)."""
        batch = UploadBatch(
            pixels_from_uint8(upload.images),
            torch.from_numpy(upload.uncertainty),
            torch.from_numpy(upload.batch_stats),
            upload.shift,
        )
        prompt = self.cloud.ingest(device_id, batch)
        if prompt is None:
            return None
        self.versions[device_id] = version = self.versions.get(device_id, 0) + 1
        return {k: prompt[k].detach().cpu().float().numpy() for k in self.parts}, version
