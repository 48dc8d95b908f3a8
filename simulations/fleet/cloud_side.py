"""The cloud of a fleet simulation: the shipped models, ``FleetCloud``, and wire-shaped glue.

Every engine builds the cloud here: the in-process loop and the Flower ServerApp call
``FleetTeacher.ingest`` with the fields a device upload carries and get back the prompt
parts to send, already as float32 NumPy arrays the device runtime accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cloud.adaptation.fleet import FleetCloud, FleetConfig
from cloud.adaptation.session import SessionConfig, UploadBatch
from cloud.server.world import CloudWorld, load_world
from protocol.errors import ConfigError
from simulations.fleet.scenario import Scenario


def load_fleet_world(
    student: str, teacher: str, run_dir: Path, teacher_checkpoint: str = "",
    min_uploads: int | None = None, companion: str = "", synthetic: int = 0,
) -> CloudWorld:  # fmt: skip
    """The student and teacher; the device model exported into ``run_dir/model`` (kept if present).

    Empty ``student`` / ``teacher_checkpoint``: the shipped files. Where the code runs from a
    copy without them (a Flower App Bundle), the caller must name them. ``companion``: a
    ``cdca train companion`` file whose view joins U-VPA's target (empty: none).
    ``synthetic``: clean images rendered like each environment per cloud update (0: none).
    """
    path = student_checkpoint(student)
    if not path.is_file():
        raise ConfigError(
            f"no student checkpoint at {path}. Under `flwr run` the app runs from a copy without "
            "the shipped checkpoints: pass --run-config \"student='/abs/student_distilled.safetensors' "
            "teacher-checkpoint='/abs/teacher_builtin.safetensors'\" (`cdca simulate --engine "
            "flower` does this for you)"
        )
    checkpoint = Path(teacher_checkpoint) if teacher_checkpoint else None
    world = load_world(
        path, teacher, run_dir, None, checkpoint, Path(companion) if companion else None, synthetic
    )
    if min_uploads is not None:
        buffer = max(world.session.buffer_size, min_uploads)
        world.session = SessionConfig(buffer_size=buffer, min_uploads=min_uploads)
    return world


def fleet_config(scenario: Scenario) -> FleetConfig:
    """What the scenario's devices share through the cloud."""
    return FleetConfig(
        scenario.environment_bank, scenario.share_across_devices, scenario.pool_uploads
    )


def student_checkpoint(student: str) -> Path:
    """The scenario's student file: the shipped distilled student when empty."""
    from cloud.distill.command import DEFAULT_DISTILLED

    return Path(student) if student else DEFAULT_DISTILLED


@dataclass
class FleetTeacher:
    """``FleetCloud`` plus per-device prompt versions, speaking NumPy on both sides."""

    cloud: FleetCloud
    parts: tuple[str, ...]
    versions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, world: CloudWorld, fleet: FleetConfig) -> FleetTeacher:
        """One cloud for the whole fleet, with the world's VPLU, session and bank settings."""
        return cls(world.new_fleet(fleet), tuple(world.vplu.parts))

    def ingest(
        self, device_id: str, fields: dict[str, object]
    ) -> tuple[dict[str, np.ndarray], int] | None:
        """One upload's fields (``device.agent``) -> the prompt parts to ship and their version."""
        images = np.asarray(fields["images"])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        upload = UploadBatch(
            pixels,
            torch.from_numpy(np.asarray(fields["uncertainty"], np.float32)),
            torch.from_numpy(np.asarray(fields["batch_stats"], np.float32)),
            bool(fields["shift"]),
        )
        prompt = self.cloud.ingest(device_id, upload)
        if prompt is None:
            return None
        self.versions[device_id] = version = self.versions.get(device_id, 0) + 1
        return {k: prompt[k].detach().cpu().float().numpy() for k in self.parts}, version
