"""Few-shot CoOp training on a frozen teacher, and the zero-shot vs learned comparison.

The image tower is frozen, so image features are computed once (CoOp's flip augmentation
becomes a second, flipped view of every shot) and each step only runs the text tower:
few-shot prompt learning takes seconds on a CPU for a small teacher.
Schedule from CoOp's configs: SGD lr 0.002, cosine, one warm-up epoch at 1e-5, batch 32,
epochs 50 (1 shot), 100 (2-4 shots), 200 (8+ shots).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cloud.coop.coop import CoOpPromptLearner
from cloud.data.labelled import LabelledImages
from cloud.students.preprocess import pixels_from_uint8
from cloud.teacher.teacher import Teacher
from protocol.errors import ConfigError


def coop_epochs(shots: int) -> int:
    """CoOp's epochs for a number of shots."""
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


def few_shot_indices(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """``shots`` random indices per class (sorted), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        if len(pool) < shots:
            raise ConfigError(f"class {label} has only {len(pool)} images; asked for {shots} shots")
        picked.append(rng.choice(pool, shots, replace=False))
    return np.sort(np.concatenate(picked))


@torch.no_grad()
def image_features(teacher: Teacher, images: np.ndarray, batch_size: int = 500) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, embed_dim) unit-norm teacher features."""
    feats = []
    for start in range(0, len(images), batch_size):
        feats.append(
            teacher.encode_images(pixels_from_uint8(images[start : start + batch_size])).cpu()
        )
    return torch.cat(feats) if feats else torch.zeros(0, teacher.embed_dim)


@dataclass(frozen=True)
class FewShotConfig:
    """CoOp's optimisation settings."""

    lr: float = 0.002
    batch_size: int = 32
    warmup_lr: float = 1e-5
    epochs: int | None = None  # None: CoOp's schedule for the number of shots
    seed: int = 0


def train_prompts(
    learner: CoOpPromptLearner, teacher: Teacher, shots: LabelledImages, config: FewShotConfig
) -> list[float]:
    """Fit ``learner``'s context to the shots; returns the loss of every epoch."""
    flipped = shots.images[:, :, ::-1]
    feats = torch.cat([image_features(teacher, shots.images), image_features(teacher, flipped)])
    labels = torch.from_numpy(np.concatenate([shots.labels, shots.labels]))
    epochs = config.epochs or coop_epochs(len(shots) // len(shots.class_names))
    optimizer = torch.optim.SGD([learner.ctx], lr=config.lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    scale = teacher.logit_scale().detach().cpu()
    history = []
    for epoch in range(epochs):
        lr = (
            config.warmup_lr
            if epoch == 0
            else config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(1, epochs - 1)))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            logits = scale * feats[idx] @ learner.class_vectors().cpu().T
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        history.append(total / steps_per_epoch)
    return history


def accuracy(features: torch.Tensor, labels: np.ndarray, class_vectors: torch.Tensor) -> float:
    """Top-1 accuracy of cosine classification of precomputed features."""
    pred = (features @ class_vectors.detach().cpu().T).argmax(1).numpy()
    return float((pred == labels).mean()) if len(labels) else float("nan")


def evaluate_domains(
    domains: dict[str, tuple[torch.Tensor, np.ndarray]], class_vectors: torch.Tensor
) -> dict[str, float]:
    """Accuracy per domain from precomputed (features, labels) pairs."""
    return {
        name: accuracy(feats, labels, class_vectors) for name, (feats, labels) in domains.items()
    }


def mean_of(values: Sequence[float]) -> float:
    """Plain mean (NaN for an empty list)."""
    return float(np.mean(values)) if len(values) else float("nan")
