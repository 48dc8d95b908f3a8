"""The cloud's re-normalisable companion teacher: a BatchNorm CNN the cloud adapts per environment.

Why: the built-in CLIP teacher is a ViT (LayerNorm only), so the cloud cannot adapt it the
way the prototype did its biggest lever (PROTOTYPE_FINDINGS.md: teacher BN statistics
re-estimated on the shifted data, 49.7 -> 71.9 %). The companion is a wider copy of the
student architecture behind a fixed local-contrast-normalisation front end
(``cloud.teacher.front_end``: smooth fields such as haze and contrast changes never reach
it), trained with the teacher's augmentations (AugMix ops and the 4 extra corruptions,
never the 15 test corruptions); in the cloud it normalises with the
statistics of one device's current-environment uploads (Schneider et al., "Improving
robustness against common corruptions by covariate shift adaptation", NeurIPS 2020,
https://arxiv.org/abs/2006.16971), and VPLU's ensemble target takes it as a third view
beside the teacher and the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cloud.data.labelled import LabelledImages
from cloud.students.architectures import CompactCNN
from cloud.students.training import ProgressFn
from cloud.teacher.front_end import apply_front_end, check_front_end
from cloud.teacher.training import TeacherTrainConfig, train_augmented
from cloud.weights_io import read_weights, save_weights
from protocol.errors import ConfigError, DataError

COMPANION_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "checkpoints" / "companion_cnn.safetensors"
)
MAKE_IT = "cdca train companion"
MIN_BATCH = 8  # batch statistics over fewer images are noise


@dataclass(frozen=True)
class CompanionConfig:
    """Hyper-parameters of the companion's training (augmentations as the teacher's)."""

    width: int = 64
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 2
    front_end: str = "lcn"  # cloud.teacher.front_end; "none" feeds the pixels as they are

    def __post_init__(self) -> None:
        check_front_end(self.front_end)


class Companion:
    """A trained companion; ``probabilities`` normalises with the images it is given."""

    def __init__(
        self, model: CompactCNN, class_names: tuple[str, ...], front_end: str = "none"
    ) -> None:
        # No running statistics at all: BatchNorm then always normalises with the given
        # images' own, and they are neither saved nor loaded.
        self.model = model.eval().requires_grad_(False)
        self.class_names = class_names
        self.front_end = check_front_end(front_end)
        for layer in self.model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.track_running_stats = False
                layer.running_mean = layer.running_var = None

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) [0, 1] pixels of one environment -> (N, C) class probabilities."""
        if len(pixels) < MIN_BATCH:
            raise DataError(f"the companion needs at least {MIN_BATCH} images, got {len(pixels)}")
        out: torch.Tensor = self.model(apply_front_end(self.front_end, pixels)).softmax(dim=1)
        return out


def train_companion(
    data: LabelledImages,
    config: CompanionConfig,
    state_path: Path,
    progress: ProgressFn | None = None,
) -> Companion:
    """Train from scratch (resumable per epoch) with the teacher's augmentations."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = CompactCNN(len(data.class_names), config.width)
    train_augmented(
        model, lambda pixels: model(apply_front_end(config.front_end, pixels)), data, config,
        TeacherTrainConfig(seed=config.seed),  # the teacher's augmentation mix
        state_path, progress,
    )  # fmt: skip
    return Companion(model, tuple(data.class_names), config.front_end)


def save_companion(path: Path, companion: Companion, meta: dict[str, object]) -> None:
    """Weights plus what rebuilding them needs (width, class names, front end) and how they were made."""
    info = {"kind": "companion", "width": companion.model.feature_dim // 4,
            "class_names": list(companion.class_names), "front_end": companion.front_end,
            **meta}  # fmt: skip
    save_weights(path, companion.model.state_dict(), info)


def companion_for(path: Path, class_names: tuple[str, ...]) -> Companion:
    """Load a companion for a student over ``class_names``; refuse one trained on other classes."""
    companion = load_companion(path)
    if companion.class_names != tuple(class_names):
        raise DataError(f"{path} was trained on classes {companion.class_names}, the student on "
                        f"{tuple(class_names)}; retrain it with `{MAKE_IT}`")  # fmt: skip
    return companion


def load_companion(path: Path = COMPANION_CHECKPOINT) -> Companion:
    """Rebuild a saved companion; a clear ``DataError`` when the file is missing or not one."""
    tensors, meta = read_weights(path, kind="companion checkpoint", make_it=MAKE_IT)
    if meta.get("kind") != "companion":
        raise DataError(f"{path} is not a companion checkpoint; create one with `{MAKE_IT}`")
    names = tuple(meta["class_names"])
    # checkpoints from before the front end existed fed the pixels as they are
    front_end = str(meta.get("front_end", "none"))
    try:
        companion = Companion(CompactCNN(len(names), int(meta["width"])), names, front_end)
    except ConfigError as err:
        raise DataError(f"{path}: {err}; retrain it with `{MAKE_IT}`") from err
    try:
        companion.model.load_state_dict(tensors)
    except RuntimeError as err:
        raise DataError(f"{path}: weights do not fit a companion ({err})") from err
    return companion
