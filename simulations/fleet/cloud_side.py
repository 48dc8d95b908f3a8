"""The cloud of a fleet simulation: the project's models, ``FleetCloud``, and wire-shaped glue.

Every engine builds the cloud here: the in-process loop and the Flower ServerApp call
``FleetTeacher.ingest`` with the fields a device upload carries and get back the prompt
parts to send, already as float32 NumPy arrays the device runtime accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cloud.adaptation.fleet import FleetCloud
from cloud.adaptation.session import UploadBatch
from cloud.server.world import CloudWorld, load_world
from cloud.students.preprocess import pixels_from_uint8
from protocol.config.adaptation import AdaptationConfig
from protocol.config.project import ProjectConfig


def load_fleet_world(project: ProjectConfig, run_dir: Path) -> CloudWorld:
    """The project's student and teacher; the device model exported into ``run_dir/model``."""
    return load_world(project, run_dir)


@dataclass
class FleetTeacher:
    """``FleetCloud`` plus per-device prompt versions, speaking NumPy on both sides."""

    cloud: FleetCloud
    parts: tuple[str, ...]
    versions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        world: CloudWorld,
        adaptation: AdaptationConfig | None = None,
        teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> FleetTeacher:
        """One cloud for the whole fleet, with ``adaptation`` (default: the project's).

        ``teacher``: pixels -> logits in place of the world's teacher (a reference row).
        """
        adaptation = adaptation or world.adaptation
        return cls(world.new_fleet(adaptation, teacher), tuple(adaptation.vplu.parts))

    def ingest(
        self, device_id: str, fields: dict[str, object]
    ) -> tuple[dict[str, np.ndarray], int] | None:
        """One upload's fields (``device.agent``) -> the prompt parts to ship and their version."""
        upload = UploadBatch(
            pixels_from_uint8(np.asarray(fields["images"])),
            torch.from_numpy(np.asarray(fields["uncertainty"], np.float32)),
            torch.from_numpy(np.asarray(fields["batch_stats"], np.float32)),
            bool(fields["shift"]),
        )
        prompt = self.cloud.ingest(device_id, upload)
        if prompt is None:
            return None
        self.versions[device_id] = version = self.versions.get(device_id, 0) + 1
        return {k: prompt[k].detach().cpu().float().numpy() for k in self.parts}, version
