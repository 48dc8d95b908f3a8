"""Every method the benchmark can run, by name: on-device peers, U-VPA and its ablations, references.

``uvpa`` is the project's ``[adaptation]`` as it stands, run on the real ONNX device and the
real cloud (``simulations.bench.cloud_device``); its ablation rows come from
``simulations.experiments``. ``cloud_teacher`` is a reference: upload every frame and let
the teacher answer.
"""

from __future__ import annotations

from cloud.server.models import CloudModels
from protocol.config.project import ProjectConfig, with_settings
from protocol.errors import ConfigError, unknown_name
from simulations.bench.cloud_device import CloudTeacherMethod, FleetMethod
from simulations.experiments import ABLATIONS, LABEL_TARGET
from simulations.online import OnlineMethod
from simulations.peers import PEERS, PixelModel, create_method

CLOUD_DEVICE_METHODS = ("uvpa", *ABLATIONS, "cloud_teacher")


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
    """

    def __init__(
        self,
        model: PixelModel,
        project: ProjectConfig,
        cloud_models: CloudModels | None,
        delay: int = 1,
        seed: int = 0,
    ) -> None:
        if delay < 1:
            raise ConfigError(
                f"--delay must be >= 1 batch (the earliest a prompt can arrive), got {delay}"
            )
        self.model, self.project, self.cloud_models, self.delay, self.seed = (
            model,
            project,
            cloud_models,
            delay,
            seed,
        )

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
            return create_method(name, self.model)
        assert self.cloud_models is not None
        if name == "cloud_teacher":
            return CloudTeacherMethod(name, self.cloud_models)
        project = with_settings(self.project, ABLATIONS.get(name, {}), f"the {name} row")
        return FleetMethod(
            name,
            self.cloud_models,
            project.adaptation,
            self.delay,
            self.seed,
            label_target=name == LABEL_TARGET,
        )
