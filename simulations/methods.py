"""Every method the benchmark can run, by name: on-device peers and cloud-device (U-VPA) rows.

The U-VPA ablations each change one thing against ``uvpa`` so the table shows what each
part contributes: how uploads are chosen (``random``), whether uncertainty guides the
update (``unguided``), what the device is taught to match (``teacher_target``), where the
prompt lives (``pixel`` full-image, ``pixel_border``, ``pixel_patch``, ``all_parts``), how
environments hand over (``homeostasis``, ``no_restart``), whether the cloud adapts a
teacher of its own (``companion``: a BatchNorm CNN re-normalised on each environment's
uploads joins the ensemble target), whether the cloud adds its own clean labelled images
rendered like each environment's uploads (``synthetic``), and two references: upload everything
(``cloud_teacher``) and a perfect teacher (``label_target``: the cloud learns from the
uploads' true labels). Which BatchNorms the cloud fits is a setting of every row
(``fit_norms``), not a row of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import torch

from cloud.adaptation.clean_set import CLEAN_SET_MISSING
from cloud.adaptation.prompt_bank import BankConfig
from cloud.adaptation.session import SessionConfig
from cloud.adaptation.synthetic import SyntheticConfig, synthetic_fit
from cloud.adaptation.vplu import FEATURE_PARTS, PIXEL_PARTS, VPLUConfig
from cloud.teacher.companion import COMPANION_CHECKPOINT, MAKE_IT
from device.sampling import SamplingConfig
from protocol.errors import ConfigError, unknown_name
from simulations.cloud_device import (
    CloudDeviceWorld,
    CloudTeacherMethod,
    UVPAConfig,
    UVPAMethod,
)
from simulations.label_target import LabelTargetMethod
from simulations.peers import PEERS, PixelModel, create_method


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


def _uvpa_variants(base: UVPAConfig) -> dict[str, UVPAConfig]:
    vplu, sampling, session = base.vplu, base.sampling, base.session
    return {
        "uvpa": base,  # feature-space prompt (BatchNorm scale/shift), ensemble target
        "uvpa_random": replace(base, sampling=replace(sampling, score="random")),
        "uvpa_disagreement": replace(base, sampling=replace(sampling, score="disagreement")),
        "uvpa_unguided": replace(base, vplu=replace(vplu, guided=False)),
        "uvpa_teacher_target": replace(base, vplu=replace(vplu, target="teacher")),
        "uvpa_pixel": replace(base, vplu=replace(vplu, parts=PIXEL_PARTS)),
        "uvpa_pixel_border": replace(
            base, vplu=replace(vplu, parts=PIXEL_PARTS, pixel_prompt="border:4")
        ),
        "uvpa_pixel_patch": replace(
            base, vplu=replace(vplu, parts=PIXEL_PARTS, pixel_prompt="patch:8")
        ),
        "uvpa_all_parts": replace(base, vplu=replace(vplu, parts=PIXEL_PARTS + FEATURE_PARTS)),
        "uvpa_homeostasis": replace(base, bank=BankConfig(shared_rate=0.5, sensitive_quantile=0.8)),
        "uvpa_companion": replace(base, companion=True),
        "uvpa_no_gate": replace(base, gate="off"),
        "uvpa_synthetic": replace(base, synthetic=SyntheticConfig.count, vplu=synthetic_fit(vplu)),
        "uvpa_no_restart": replace(
            base,
            session=replace(session, restart_on_shift=False),
            sampling=replace(sampling, detect_shifts=False),
        ),  # fmt: skip
        # an upper reference, not a method: the true label as the cloud's target
        "uvpa_label_target": replace(base, vplu=replace(vplu, target="teacher")),
    }


CLOUD_DEVICE_METHODS = (*_uvpa_variants(UVPAConfig()), "cloud_teacher")
# rows that render the cloud's clean training set (loaded only when one of them runs)
SYNTHETIC_METHODS = tuple(n for n, c in _uvpa_variants(UVPAConfig()).items() if c.synthetic)


def list_methods() -> list[str]:
    """Every name, peers first, in table order."""
    return [*PEERS, *CLOUD_DEVICE_METHODS]


class MethodFactory:
    """Builds fresh methods by name around the same source model (and cloud, when there is one).

    Args:
        model: the device student taking [0, 1] pixels, for the on-device peers.
        world: device graph, teacher and class vectors; None when the student has no
            teacher (a label-trained student), which rules out the cloud-device rows.
        delay: batches between the cloud learning a prompt and the device using it.
        budget: share of frames a device may upload.
        fit_norms: which BatchNorms the cloud's fit may change in every U-VPA row
            (``VPLUConfig.fit_norms``).
    """

    def __init__(
        self, model: PixelModel, world: CloudDeviceWorld | None, delay: int = 1,
        budget: float = 0.1, fit_norms: str = VPLUConfig.fit_norms,
    ) -> None:  # fmt: skip
        if delay < 1:
            raise ConfigError(
                f"--delay must be >= 1 batch (the earliest a prompt can arrive), got {delay}"
            )
        self.model, self.world = model, world
        base = UVPAConfig(sampling=SamplingConfig(budget=budget),
                          vplu=VPLUConfig(fit_norms=fit_norms),
                          session=SessionConfig(), delay=delay)  # fmt: skip
        self.variants = _uvpa_variants(base)

    def check(self, name: str) -> None:
        """Fail before any work when ``name`` cannot be built."""
        if name not in PEERS and name not in CLOUD_DEVICE_METHODS:
            raise unknown_name("method", name, list_methods())
        if name in CLOUD_DEVICE_METHODS and self.world is None:
            raise ConfigError(
                f"method {name!r} needs a distilled student and its teacher; pass --student "
                "with a checkpoint from `cdca cloud distill` (the default student is one)"
            )
        if self.variants.get(name, UVPAConfig()).synthetic and self.world.clean is None:  # type: ignore[union-attr]
            raise ConfigError(f"method {name!r} renders the cloud's clean training set; "
                              f"{CLEAN_SET_MISSING}")  # fmt: skip
        if self.variants.get(name, UVPAConfig()).companion and self.world.companion is None:  # type: ignore[union-attr]
            raise ConfigError(f"method {name!r} needs a companion teacher trained on the "
                              f"student's classes at {COMPANION_CHECKPOINT}; create it with "
                              f"`{MAKE_IT}`")  # fmt: skip

    def create(self, name: str) -> OnlineMethod:
        """A fresh method; peers copy the model, cloud-device methods share the frozen graph."""
        self.check(name)
        if name in PEERS:
            return create_method(name, self.model)
        assert self.world is not None
        if name == "cloud_teacher":
            return CloudTeacherMethod(name, self.world)
        if name == "uvpa_label_target":
            return LabelTargetMethod(name, self.world, self.variants[name])
        return UVPAMethod(name, self.world, self.variants[name])


MethodMaker = Callable[[str], OnlineMethod]
