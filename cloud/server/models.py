"""What one cloud server adapts with: the served device model, the cloud's torch copy, the teacher.

The devices run the ONNX file this module serves (exported from ``student`` into the state
folder on first start, or a folder the operator names); the cloud learns prompts on the
same graph in PyTorch (``DeviceModel``), so a prompt fits the device exactly. Devices must
register with that model's SHA-256 (fp32 or its int8 copy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

from cloud.adaptation.fleet import FleetCloud
from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.adaptation.vplu import VPLU
from cloud.export.device_model import DeviceModel
from cloud.shipped import distilled_student
from cloud.students.preprocess import Normalization
from protocol.config.adaptation import AdaptationConfig
from protocol.config.project import ProjectConfig
from protocol.errors import ConfigError, DataError
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
class CloudModels:
    """The frozen pieces every device session shares, and the project's adaptation settings."""

    device_model: DeviceModel
    class_vectors: torch.Tensor
    normalization: Normalization
    teacher: Callable[[torch.Tensor], torch.Tensor]
    served: ServedModel
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    synthetic: EnvironmentRenderer | None = None  # cloud.adaptation.synthetic; None: uploads only

    @cached_property
    def running_stats(self) -> torch.Tensor:
        """(2, K) the student's running means and variances: what uploaded statistics are checked against."""
        return self._cpu_vplu().running_stats

    @cached_property
    def neutral(self) -> dict[str, torch.Tensor]:
        """The unadapted student's prompt parts (built once; read-only: banks copy them)."""
        return self._cpu_vplu().neutral_prompt()

    def _cpu_vplu(self) -> VPLU:
        """A VPLU to read the student's constants from (no copy of the model to a GPU)."""
        return VPLU(
            self.device_model, self.class_vectors, replace(self.adaptation.fit, device="cpu")
        )

    def new_fleet(
        self,
        adaptation: AdaptationConfig | None = None,
        teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> FleetCloud:
        """The cloud side of every device these models serve (sessions, environment bank).

        ``adaptation``: settings other than the project's (e.g. a run without the
        environment bank, for comparison); synthetic samples need a renderer in this cloud_models.
        ``teacher``: [0, 1] pixels -> logits instead of these models' teacher.
        """
        adaptation = adaptation or self.adaptation
        vplu = VPLU(self.device_model, self.class_vectors, adaptation.fit)
        renderer = None
        if adaptation.synthetic.count:
            if self.synthetic is None:
                raise ConfigError("this cloud was loaded without synthetic samples")
            renderer = self.synthetic.with_config(adaptation.synthetic)
        return FleetCloud(
            vplu, teacher or self.teacher_logits, self.normalization.apply, adaptation, renderer
        )

    @torch.no_grad()
    def teacher_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher's logits over the device classes, on the CPU."""
        return self.teacher(pixels).float().cpu()


def load_cloud_models(
    project: ProjectConfig, state_dir: Path, model_dir: Path | None = None
) -> CloudModels:
    """Load the project's student and teacher, and export (or check) the model folder devices get.

    ``model_dir``: serve this exported folder; None: export into ``state_dir/model`` (kept
    when it is there and comes from the same student).
    """
    from cloud.distill.checkpoint import load_distilled
    from cloud.teacher.factory import teacher_for

    distilled, vectors, info = load_distilled(distilled_student(project))
    # a bad synthetic request fails here, before the export and the teacher
    renderer = _renderer(project, info.class_names, info.image_size)
    device_model = DeviceModel(distilled, image_size=info.image_size)
    folder = model_dir or state_dir / "model"
    exported_now = model_dir is None and not (folder / MANIFEST_FILE).is_file()
    if exported_now:
        from cloud.export.onnx_export import export_device_model

        log.info("exporting the device model into %s", folder)
        export_device_model(distilled, vectors, info, folder)  # checks parity itself
    served = served_model(folder, device_model)
    if not exported_now:
        check_same_student(served, device_model, vectors)
    cloud_teacher = teacher_for(project.teacher, info.class_names, project.data.image_size)
    return CloudModels(
        device_model,
        vectors,
        info.normalization,
        lambda pixels: cloud_teacher.logits(pixels, vectors),
        served,
        project.adaptation,
        renderer,
    )


def _renderer(
    project: ProjectConfig, class_names: tuple[str, ...], image_size: int
) -> EnvironmentRenderer | None:
    """The renderer of the project's synthetic samples (None for a count of 0)."""
    synthetic = project.adaptation.synthetic
    if not synthetic.count:
        return None
    from cloud.adaptation.clean_set import clean_renderer

    renderer = clean_renderer(project.data, class_names, image_size, synthetic)
    log.info(
        "synthetic samples: %d training images rendered like each environment per update, "
        "fitted with Adam lr %g",
        synthetic.count,
        synthetic.fit_lr,
    )
    return renderer


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
