"""What one cloud server adapts with: the served device model, the cloud's torch copy, the teacher.

The devices run the ONNX file this module serves (exported from ``student`` into the state
folder on first start, or a folder the operator names); the cloud learns prompts on the
same graph in PyTorch (``DeviceModel``), so a prompt fits the device exactly. Devices must
register with that model's SHA-256 (fp32 or its int8 copy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from cloud.adaptation.fleet import FleetCloud, FleetConfig
from cloud.adaptation.prompt_bank import BankConfig
from cloud.adaptation.session import SessionConfig
from cloud.adaptation.synthetic import EnvironmentRenderer, synthetic_fit
from cloud.adaptation.vplu import VPLU, VPLUConfig
from cloud.export.device_model import DeviceModel
from cloud.students.preprocess import Normalization
from protocol.errors import DataError
from protocol.manifest import (
    INT8_MANIFEST_FILE,
    MANIFEST_FILE,
    ModelManifest,
    load_manifest,
    verify_model_file,
)

log = logging.getLogger("cdca.cloud")


@dataclass(frozen=True)
class ServedModel:
    """The model folder devices download, and what the server checks uploads against."""

    folder: Path
    manifest: ModelManifest
    manifest_path: Path
    accepted_sha256: frozenset[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of an uploaded frame: the model's input size."""
        size = self.manifest.preprocess.image_size
        return (size, size, 3)

    @property
    def stats_shape(self) -> tuple[int, int]:
        """(2, K) batch statistics."""
        shape = self.manifest.input("norm_stats").shape
        return (int(shape[0]), int(shape[1]))

    def model_bytes(self) -> bytes:
        """The fp32 model file, after checking its hash."""
        path = verify_model_file(self.manifest, self.folder / self.manifest.model_file)
        return path.read_bytes()


@dataclass
class CloudWorld:
    """The frozen pieces every device session shares."""

    device_model: DeviceModel
    class_vectors: torch.Tensor
    normalization: Normalization
    teacher: Callable[[torch.Tensor], torch.Tensor]
    served: ServedModel
    vplu: VPLUConfig = field(default_factory=VPLUConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    companion: Callable[[torch.Tensor], torch.Tensor] | None = None  # cloud.teacher.companion
    synthetic: EnvironmentRenderer | None = None  # cloud.adaptation.synthetic; None: uploads only

    @cached_property
    def neutral(self) -> dict[str, torch.Tensor]:
        """The unadapted student's prompt parts (built once; read-only: banks copy them)."""
        return VPLU(self.device_model, self.class_vectors, self.vplu).neutral_prompt()

    def new_fleet(self, fleet: FleetConfig | None = None) -> FleetCloud:
        """The cloud side of every device this world serves (sessions, environment bank).

        ``fleet``: what devices share, when not this world's setting (e.g. a run without
        the environment bank, for comparison).
        """
        vplu = VPLU(self.device_model, self.class_vectors, self.vplu)
        return FleetCloud(vplu, self.teacher_logits, self.normalization.apply,
                          self.session, self.bank, fleet or self.fleet,
                          companion=self.companion, synthetic=self.synthetic)  # fmt: skip

    @torch.no_grad()
    def teacher_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher's logits over the device classes, on the CPU."""
        return self.teacher(pixels).float().cpu()


def load_world(
    student: Path, teacher: str, state_dir: Path, model_dir: Path | None,
    teacher_checkpoint: Path | None = None, companion: Path | None = None,
    synthetic: int = 0,
) -> CloudWorld:  # fmt: skip
    """Load the student and teacher, and export (or check) the model folder devices get.

    ``teacher_checkpoint``: for the built-in teacher, weights other than the shipped file.
    ``companion``: a ``cdca train companion`` checkpoint that joins every ensemble target.
    ``synthetic``: clean images rendered like each environment per update (0: none); needs
    the cloud's clean set for the student's classes (``cloud.adaptation.clean_set``).
    """
    from cloud.distill.checkpoint import load_distilled
    from cloud.teacher.factory import create_teacher

    distilled, vectors, info = load_distilled(student)
    # a bad synthetic request fails here, before the export and the teacher
    renderer, vplu = _synthetic_setup(tuple(info.class_names), synthetic)
    device_model = DeviceModel(distilled)
    folder = model_dir or state_dir / "model"
    exported_now = model_dir is None and not (folder / MANIFEST_FILE).is_file()
    if exported_now:
        from cloud.export.onnx_export import export_device_model

        log.info("exporting the device model into %s", folder)
        export_device_model(distilled, vectors, info, folder)  # checks parity itself
    served = served_model(folder, device_model)
    if not exported_now:
        check_same_student(served, device_model, vectors)
    cloud_teacher = create_teacher(teacher, checkpoint=teacher_checkpoint)
    view = None
    if companion is not None:
        from cloud.teacher.companion import companion_for

        view = companion_for(companion, info.class_names).probabilities
    return CloudWorld(
        device_model, vectors, info.normalization,
        lambda pixels: cloud_teacher.logits(pixels, vectors), served, companion=view,
        synthetic=renderer, vplu=vplu,
    )  # fmt: skip


def _synthetic_setup(
    class_names: tuple[str, ...], count: int
) -> tuple[EnvironmentRenderer | None, VPLUConfig]:
    """The renderer of ``count`` synthetic samples (None for 0) and the fit settings it bears."""
    # a negative count is refused by the scenario and server configs, and by SyntheticConfig
    if not count:
        return None, VPLUConfig()
    from cloud.adaptation.clean_set import clean_renderer

    renderer, vplu = clean_renderer(class_names, count), synthetic_fit(VPLUConfig())
    log.info("synthetic samples: %d clean images rendered like each environment per update, "
             "fitted with Adam lr %g", count, vplu.lr)  # fmt: skip
    return renderer, vplu


def check_same_student(
    served: ServedModel, device_model: DeviceModel, vectors: torch.Tensor
) -> None:
    """Refuse a model folder exported from another student.

    Its devices would run one model while the cloud learns prompts for another. Same
    student means the same outputs, so an export from an older cdca version passes.
    """
    from cloud.export.onnx_export import PARITY_TOLERANCE, parity_check

    model_file = served.folder / served.manifest.model_file
    example = device_model.neutral_inputs(vectors, batch=2)
    difference = parity_check(device_model, model_file, example, trials=1)
    if not difference <= PARITY_TOLERANCE:  # NaN included
        raise DataError(
            f"{model_file} does not compute what the cloud's student does (outputs differ by "
            f"{difference:.3g}): it was exported from another student. Move {served.folder} "
            "away to export a fresh one, or serve the student it came from"
        )


def served_model(folder: Path, device_model: DeviceModel) -> ServedModel:
    """Check an exported model folder against the cloud's copy of the student."""
    manifest_path = folder / MANIFEST_FILE
    manifest = load_manifest(manifest_path)
    verify_model_file(manifest, folder / manifest.model_file)
    channels = int(manifest.input("norm_stats").shape[1])
    if channels != device_model.num_norm_channels:
        raise DataError(
            f"{manifest_path} has {channels} normalisation channels but the student has "
            f"{device_model.num_norm_channels}: export the model from the same student"
        )
    accepted = {manifest.sha256}
    int8 = folder / INT8_MANIFEST_FILE
    if int8.is_file():
        accepted.add(load_manifest(int8).sha256)
    return ServedModel(folder, manifest, manifest_path, frozenset(accepted))
