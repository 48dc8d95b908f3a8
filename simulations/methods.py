"""Every method the benchmark can run, by name: on-device peers, U-VPA and its ablations, CEMA, references.

``uvpa`` is the project's ``[adaptation]`` as it stands, run on the real ONNX device and the
real cloud (``simulations.bench.cloud_device``); its ablation rows come from
``simulations.experiments``. The CEMA rows run CEMA's cloud and edge filter on the same
device and wire: ``cema`` at its own selection rate, ``cema_budget`` capped at the project's
upload budget, and the two crossings (``uvpa_cema_selection``: U-VPA's cloud fed by CEMA's
filter; ``cema_ugs_selection``: CEMA's cloud fed by U-VPA's uncertainty-guided uploads), and
``uvpa_cema_teacher``, U-VPA whose teacher takes CEMA's entropy steps on its norm layers.
``cloud_teacher`` is a reference: upload every frame and let the teacher answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from cloud.server.models import CloudModels
from cloud.teacher.teacher import Teacher
from protocol.config.project import ProjectConfig, with_settings
from protocol.errors import ConfigError, unknown_name
from simulations.bench.cloud_device import CloudTeacherMethod, FleetMethod
from simulations.experiments import ABLATIONS, INT8_DEVICE, LABEL_TARGET
from simulations.harness.simulated_cloud import SimulatedCloud
from simulations.online import OnlineMethod
from simulations.peers import PEERS, PixelModel, create_method
from simulations.peers.cema import CemaCloud, CemaSampler, CemaSettings
from simulations.peers.cema.teacher import AdaptingTeacher

# row -> (CEMA's cloud?, CEMA's edge filter?, capped at the project's budget?)
CEMA_ROWS: dict[str, tuple[bool, bool, bool]] = {
    "cema": (True, True, False),
    "cema_budget": (True, True, True),
    "uvpa_cema_selection": (False, True, True),
    "cema_ugs_selection": (True, False, True),
}
CEMA_TEACHER = "uvpa_cema_teacher"
CLOUD_DEVICE_METHODS = (
    "uvpa",
    *ABLATIONS,
    INT8_DEVICE,
    *CEMA_ROWS,
    CEMA_TEACHER,
    "cloud_teacher",
)


def list_methods() -> list[str]:
    """Every name, peers first, in table order."""
    return [*PEERS, *CLOUD_DEVICE_METHODS]


def check_method(name: str) -> None:
    """Fail on an unknown name before any work."""
    if name not in PEERS and name not in CLOUD_DEVICE_METHODS:
        raise unknown_name("method", name, list_methods())


class MethodFactory:
    """Builds fresh methods by name around the same student (and cloud, when there is one).

    Args:
        model: the device student taking [0, 1] pixels, for the on-device peers.
        project: the settings every U-VPA row starts from.
        cloud_models: the cloud (exported device model, teacher); None when the student has no
            teacher (a label-trained student), which rules out the cloud-device rows.
        delay: batches between the cloud learning a prompt and the device using it.
        seed: the device's seed for its random picks.
        source: clean images in [0, 1] for peers that read source data (EATA, forward-only).
        teacher: builds a fresh teacher that CEMA's cloud may adapt (one per run).
        peer_settings: per method, constructor settings instead of the paper's (``cema``
            sets ``CemaSettings`` fields for every CEMA row).
    """

    def __init__(
        self,
        model: PixelModel,
        project: ProjectConfig,
        cloud_models: CloudModels | None,
        delay: int = 1,
        seed: int = 0,
        source: Callable[[], torch.Tensor | None] | None = None,
        teacher: Callable[[], Teacher] | None = None,
        peer_settings: dict[str, dict[str, object]] | None = None,
    ) -> None:
        if delay < 1:
            raise ConfigError(
                f"--delay must be >= 1 batch (the earliest a prompt can arrive), got {delay}"
            )
        self.model, self.project, self.cloud_models = model, project, cloud_models
        self.delay, self.seed = delay, seed
        self._source, self._teacher = source, teacher
        self._source_images: torch.Tensor | None = None
        self.peer_settings = peer_settings or {}
        self._check_peer_settings()

    def check(self, name: str) -> None:
        """Fail before any work when ``name`` cannot be built."""
        check_method(name)
        if name in CLOUD_DEVICE_METHODS and self.cloud_models is None:
            raise ConfigError(
                f"method {name!r} needs a distilled student and its teacher; set "
                "student.checkpoint (or --student) to a `cdca cloud distill` checkpoint"
            )

    def create(self, name: str) -> OnlineMethod:
        """A fresh method; peers copy the model, cloud-device methods share the frozen cloud."""
        self.check(name)
        if name in PEERS:
            source = self.source_images() if PEERS[name].needs_source else None
            return create_method(name, self.model, source, **self.peer_settings.get(name, {}))
        assert self.cloud_models is not None
        if name == "cloud_teacher":
            return CloudTeacherMethod(
                name, self.cloud_models, self.project.adaptation.device.encoding
            )
        if name in CEMA_ROWS:
            return self._cema_row(name)
        if name == CEMA_TEACHER:
            return self._cema_teacher_row(name)
        project = with_settings(self.project, ABLATIONS.get(name, {}), f"the {name} row")
        return FleetMethod(
            name,
            self.cloud_models,
            project.adaptation,
            self.delay,
            self.seed,
            label_target=name == LABEL_TARGET,
            manifest=self._int8_manifest() if name == INT8_DEVICE else None,
        )

    def _int8_manifest(self) -> Path:
        """The served model's int8 copy (``cdca cloud export --int8``), quantised here if missing."""
        from cloud.data.splits import load_split
        from cloud.export.onnx_export import ExportResult, quantize_int8
        from protocol.manifest import INT8_MANIFEST_FILE, MANIFEST_FILE

        assert self.cloud_models is not None
        served = self.cloud_models.served
        path = served.folder / INT8_MANIFEST_FILE
        if path.is_file():
            return path
        train = load_split(self.project.data, "train", 256)
        calibration = self.cloud_models.normalization.to_tensor(train.images).numpy()
        export = ExportResult(
            served.folder / served.manifest.model_file, served.folder / MANIFEST_FILE,
            served.folder / str(served.manifest.defaults_file), 0.0, 0.0,
        )  # fmt: skip
        example = self.cloud_models.device_model.neutral_inputs(
            self.cloud_models.class_vectors, batch=2
        )
        return quantize_int8(export, calibration, served.manifest, example)[1]

    def _check_peer_settings(self) -> None:
        """Fail before any work on a setting for a method that has none of that name."""
        for name, settings in self.peer_settings.items():
            if name == "cema":
                cema_settings(settings)
            elif name not in PEERS:
                raise ConfigError(
                    f"--peer-setting names {name!r}; settings go to on-device peers "
                    f"({', '.join(PEERS)}) or cema"
                )

    def source_images(self) -> torch.Tensor | None:
        """The clean images, loaded once."""
        if self._source_images is None and self._source is not None:
            self._source_images = self._source()
        return self._source_images

    def _fresh_teacher(self, name: str) -> Teacher:
        """A teacher of this row's own, which its cloud may adapt."""
        if self._teacher is None:
            raise ConfigError(f"method {name!r} needs the project's teacher")
        return self._teacher()

    def _cema_teacher_row(self, name: str) -> FleetMethod:
        """U-VPA as it stands, its teacher adapted by CEMA's entropy step every 32 uploads."""
        assert self.cloud_models is not None
        settings = cema_settings(self.peer_settings.get("cema", {}))
        lr = settings.teacher_lr * settings.lr_scale
        teacher = AdaptingTeacher(
            self._fresh_teacher(name),
            self.cloud_models.class_vectors,
            lr,
            settings.momentum,
            settings.entropy_margin,
            settings.batch,
        )
        adaptation = self.project.adaptation
        cloud = SimulatedCloud.build(self.cloud_models, adaptation, teacher)
        record: dict[str, object] = {"teacher_lr": lr, "teacher_batch": settings.batch}
        return FleetMethod(
            name,
            self.cloud_models,
            adaptation,
            self.delay,
            self.seed,
            cloud=cloud,
            hyperparameters={"cloud": "the project's [adaptation]", **record},
        )

    def _cema_row(self, name: str) -> FleetMethod:
        assert self.cloud_models is not None
        cema_cloud, cema_filter, capped = CEMA_ROWS[name]
        adaptation = self.project.adaptation
        budget = adaptation.device.budget if capped else None
        settings = cema_settings(self.peer_settings.get("cema", {}))
        record: dict[str, object] = {"upload_cap": budget if budget is not None else "none"}
        cloud = None
        if cema_cloud:
            cloud = CemaCloud(self.cloud_models, self._fresh_teacher(name), settings)
            record["cema_cloud"] = settings.to_json()
            # CEMA's edge applies what it gets: no second pass to check it
            adaptation = with_settings(
                self.project, {"adaptation.device.gate": "off"}, f"the {name} row"
            ).adaptation
        sampler = None
        if cema_filter:
            channels = self.cloud_models.served.manifest.norm_layers[0]["channels"]
            sampler = CemaSampler(adaptation.device, int(channels), self.seed, budget)
            record["cema_filter"] = {
                "entropy_margin": f"{sampler.entropy_margin} ln C",
                "cosine_margin": sampler.cosine_margin,
            }
        return FleetMethod(
            name,
            self.cloud_models,
            adaptation,
            self.delay,
            self.seed,
            cloud=cloud,
            sampler=sampler,
            hyperparameters=record,
        )


def cema_settings(values: dict[str, object]) -> CemaSettings:
    """CEMA's settings with ``values`` replacing fields; a clear error for an unknown one."""
    known = [f.name for f in dataclasses.fields(CemaSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"cema has no setting {unknown}; it takes {known}")
    return dataclasses.replace(CemaSettings(), **values)  # type: ignore[arg-type]
