"""Every method the benchmark can run, by name: on-device peers, U-VPA and its ablations, references.

``uvpa`` is the project's ``[adaptation]`` as it stands, run on the real ONNX device and the
real cloud (``simulations.bench.cloud_device``). Each ablation changes settings by their
keys, so the table shows what one part contributes: how uploads are chosen
(``uvpa_random``, ``uvpa_disagreement``), whether uncertainty guides the update
(``uvpa_unguided``), what the device is taught to match (``uvpa_teacher_target``), the
device's check on each prompt (``uvpa_no_gate``), the rendered clean samples
(``uvpa_no_synthetic``), how environments hand over (``uvpa_homeostasis``,
``uvpa_no_restart``) and which device-model inputs the cloud learns (``uvpa_all_parts``).
Two references: upload everything (``cloud_teacher``) and a perfect teacher
(``uvpa_label_target``: the cloud learns from the uploads' true labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from cloud.server.world import CloudWorld
from protocol.config.adaptation import PARTS
from protocol.config.project import ProjectConfig, with_settings
from protocol.errors import ConfigError, unknown_name
from simulations.bench.cloud_device import CloudTeacherMethod, FleetMethod
from simulations.peers import PEERS, PixelModel, create_method

ABLATIONS: dict[str, dict[str, object]] = {
    "uvpa_random": {"adaptation.device.score": "random"},
    "uvpa_disagreement": {"adaptation.device.score": "disagreement"},
    "uvpa_unguided": {"adaptation.vplu.guided": False},
    "uvpa_teacher_target": {"adaptation.vplu.target": "teacher"},
    "uvpa_no_gate": {"adaptation.device.gate": "off"},
    "uvpa_no_synthetic": {"adaptation.synthetic.count": 0},
    "uvpa_homeostasis": {
        "adaptation.prompt_bank.shared_rate": 0.5,
        "adaptation.prompt_bank.sensitive_quantile": 0.8,
    },
    "uvpa_no_restart": {
        "adaptation.session.restart_on_shift": False,
        "adaptation.device.detect_shifts": False,
    },
    "uvpa_all_parts": {"adaptation.vplu.parts": ",".join(PARTS)},
    # an upper reference, not a method: the true label as the cloud's target
    "uvpa_label_target": {"adaptation.vplu.target": "teacher"},
}
CLOUD_DEVICE_METHODS = ("uvpa", *ABLATIONS, "cloud_teacher")


class OnlineMethod(Protocol):
    """What the benchmark drives: predict-then-adapt per batch, plus what it cost."""

    name: str
    uses_backprop: bool

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict the batch (returned logits), then adapt on it."""
        ...

    def costs(self) -> dict[str, float]:
        """Uploads, bytes per 1,000 frames and cloud compute so far."""
        ...


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
        world: the cloud (exported device model, teacher); None when the student has no
            teacher (a label-trained student), which rules out the cloud-device rows.
        delay: batches between the cloud learning a prompt and the device using it.
        seed: the device's seed for its random picks.
    """

    def __init__(
        self,
        model: PixelModel,
        project: ProjectConfig,
        world: CloudWorld | None,
        delay: int = 1,
        seed: int = 0,
    ) -> None:
        if delay < 1:
            raise ConfigError(
                f"--delay must be >= 1 batch (the earliest a prompt can arrive), got {delay}"
            )
        self.model, self.project, self.world, self.delay, self.seed = (
            model,
            project,
            world,
            delay,
            seed,
        )

    def check(self, name: str) -> None:
        """Fail before any work when ``name`` cannot be built."""
        check_method(name)
        if name in CLOUD_DEVICE_METHODS and self.world is None:
            raise ConfigError(
                f"method {name!r} needs a distilled student and its teacher; set "
                "student.checkpoint (or --student) to a `cdca cloud distill` checkpoint"
            )

    def create(self, name: str) -> OnlineMethod:
        """A fresh method; peers copy the model, cloud-device methods share the frozen cloud."""
        self.check(name)
        if name in PEERS:
            return create_method(name, self.model)
        assert self.world is not None
        if name == "cloud_teacher":
            return CloudTeacherMethod(name, self.world)
        project = with_settings(self.project, ABLATIONS.get(name, {}), f"the {name} row")
        return FleetMethod(
            name,
            self.world,
            project.adaptation,
            self.delay,
            self.seed,
            label_target=name == "uvpa_label_target",
        )


MethodMaker = Callable[[str], OnlineMethod]
