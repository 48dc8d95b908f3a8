"""``[teacher]`` and ``[student]``: which models a project uses and where their weights live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from protocol.config.loader import SPEC, check_choices
from protocol.errors import ConfigError

Precision = Literal["fp32", "fp16", "bf16"]
StudentArch = Literal["compact_cnn", "mobilenet_v3_small", "resnet18"]
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class TeacherConfig:
    """[teacher]: the cloud's CLIP model, which labels the devices' uploads.

    Attributes:
        model: ``builtin`` (cdca's small CLIP, trained on the project's data by ``cdca train
            teacher``), an open_clip model name such as ``ViT-B-32`` (with ``pretrained``),
            or ``local-dir:DIR`` (an open_clip folder with ``open_clip_config.json``).
        pretrained: for open_clip names: a pretrained tag (``openai``,
            ``laion2b_s34b_b79k``, downloaded once when online) or a weights file.
        checkpoint: the built-in teacher's weights: what ``cdca train teacher`` writes and
            every other command loads. Empty: the teacher shipped with cdca, which knows
            only Fashion-MNIST's classes.
        template: the caption each class name is put into (``{}`` is the name).
        prompts: a CoOp prompt file from ``cdca cloud learn-prompts``; when set, its learned
            captions replace ``template`` in distillation. Empty: the template.
        precision: ``fp32``, ``fp16`` or ``bf16`` for the teacher's weights.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:0``, ...
    """

    model: str = field(default="builtin", metadata={SPEC: True})
    pretrained: str = field(default="", metadata={SPEC: True})
    checkpoint: Path | None = None
    template: str = DEFAULT_TEMPLATE
    prompts: Path | None = None
    precision: Precision = "fp32"
    device: str = "auto"

    def __post_init__(self) -> None:
        check_choices(self)
        if "{}" not in self.template:
            raise ConfigError(
                f"template needs a {{}} where the class name goes, got {self.template!r}"
            )
        if self.model == "builtin" and self.pretrained:
            raise ConfigError(
                "pretrained is for open_clip models; the built-in teacher's weights are "
                "checkpoint (leave pretrained empty, or set model to an open_clip name)"
            )
        if self.model != "builtin" and self.checkpoint is not None:
            raise ConfigError(
                "checkpoint is the built-in teacher's weights; an open_clip model takes its "
                "weights from pretrained (a tag or a file)"
            )

    @property
    def is_builtin(self) -> bool:
        """Whether this is cdca's own small CLIP (trained with ``cdca train teacher``)."""
        return self.model == "builtin"


@dataclass(frozen=True)
class StudentConfig:
    """[student]: the small model every device runs.

    Attributes:
        arch: ``compact_cnn`` (five conv layers, ~140k parameters), ``mobilenet_v3_small`` or
            ``resnet18`` (torchvision's).
        checkpoint: the distilled student: what ``cdca cloud distill`` writes and ``export``,
            ``serve``, ``simulate`` and ``bench`` run. Empty: the one shipped with cdca
            (Fashion-MNIST's classes).
        label_trained: a student trained on the labels (``cdca train student``): an
            on-device reference in the distillation report. Empty: the shipped one when the
            classes are Fashion-MNIST's, else none.
        init: weights to start the architecture from before training or distillation (a
            ``.safetensors`` file or a torchvision ``state_dict`` saved with torch.save);
            layers whose shapes differ, such as the classifier, keep their random start.
            Empty: a random start.
    """

    arch: StudentArch = "compact_cnn"
    checkpoint: Path | None = None
    label_trained: Path | None = None
    init: Path | None = None

    def __post_init__(self) -> None:
        check_choices(self)
