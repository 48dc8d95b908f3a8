"""Training the built-in teacher: CLIP-style image-text alignment on the project's clean images.

Each image is paired with the caption ``"a photo of a {class}."``; since a batch holds
many images per caption, the contrastive loss is taken against the set of distinct
captions (one per class), which trains both towers exactly as CLIP's image-to-text loss
does without counting duplicate captions as negatives. Robustness comes from per-image
standardisation (in the teacher's preprocessing) and from augmentations disjoint from the
test corruptions (``augment.py``). From scratch on a new dataset the run is kept stable by
the one-cycle schedule's warm-up and by clipping the gradient norm, and stopped with a
message (``cloud.watchdog``) when it diverges or sits at chance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cloud.data.labelled import LabelledImages
from cloud.resumable import resume_training_state, save_training_state
from cloud.students.preprocess import pixels_from_uint8
from cloud.students.training import augment as translate_and_flip
from cloud.teacher.augment import augmix, extra_corruptions
from cloud.teacher.teacher import DEFAULT_TEMPLATE, Teacher
from cloud.watchdog import TrainingWatch

WARMUP_SHARE = 0.15  # of all steps, rising to the peak learning rate
CHANCE_HINT = (
    "Try a lower --lr (e.g. a third), more images or epochs, or a pretrained open_clip "
    "teacher (teacher.model, teacher.pretrained); nothing was written."
)
ProgressFn = Callable[[int, int, float], None]  # (epoch, step, loss)


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Hyper-parameters of the built-in teacher's training."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0  # clipped: one bad batch early on cannot throw the towers off
    extra_corruption_prob: float = 0.5
    augmix_prob: float = 0.5
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    threads: int = 2


def train_teacher(
    teacher: Teacher,
    data: LabelledImages,
    config: TeacherTrainConfig,
    state_path: Path,
    progress: ProgressFn | None = None,
) -> Teacher:
    """Train both towers of ``teacher`` in place; resumable from ``state_path`` after each epoch."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model: torch.nn.Module = teacher.model.float().train().requires_grad_(True)
    captions = [config.template.format(name) for name in data.class_names]

    def clamp_temperature() -> None:
        with torch.no_grad():  # CLIP clamps its temperature at 100
            teacher.model.logit_scale.clamp_(0, np.log(100))

    train_augmented(
        model,
        lambda pixels: teacher.logits(pixels, teacher.encode_texts(captions)),
        data,
        config,
        state_path,
        progress,
        clamp_temperature,
    )
    model.eval().requires_grad_(False)
    return teacher


def train_augmented(
    model: torch.nn.Module,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    data: LabelledImages,
    config: TeacherTrainConfig,
    state_path: Path,
    progress: ProgressFn | None = None,
    after_step: Callable[[], None] | None = None,
) -> None:
    """The teacher's training loop, resumable from ``state_path`` per epoch.

    AdamW with a one-cycle schedule and a clipped gradient norm, label-smoothed
    cross-entropy on ``logits_of`` the teacher's augmentations. Seed the global RNG and
    build ``model`` before calling: this loop draws only from its own per-epoch generators.

    Raises:
        TrainingFailed: the loss became NaN, or sat at chance after the warm-up.
    """
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps = int(np.ceil(len(data) / config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=WARMUP_SHARE
    )
    settings = dict(vars(config))  # what the resumable state must match
    start = resume_training_state(state_path, settings, model, optimizer, scheduler)
    watch = TrainingWatch(
        "the teacher", len(data.class_names), int(WARMUP_SHARE * config.epochs * steps), CHANCE_HINT
    )
    for epoch in range(start, config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = rng.permutation(len(data))
        model.train()
        for step, first in enumerate(range(0, len(data), config.batch_size)):
            idx = np.sort(order[first : first + config.batch_size])
            pixels = augmented_batch(data.images[idx], config, rng, generator)
            loss = F.cross_entropy(
                logits_of(pixels),
                torch.from_numpy(data.labels[idx]),
                label_smoothing=config.label_smoothing,
            )
            watch.step(float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if after_step:
                after_step()
            if progress:
                progress(epoch, step, float(loss.detach()))
        watch.end_epoch(epoch)
        save_training_state(state_path, settings, epoch, model, optimizer, scheduler)


def augmented_batch(
    images: np.ndarray,
    config: TeacherTrainConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> torch.Tensor:
    """Uint8 images -> [0, 1] pixels with the teacher's augmentations (extra corruptions, AugMix, shifts)."""
    corrupted = extra_corruptions(images, config.extra_corruption_prob, rng)
    u8 = torch.from_numpy(corrupted).permute(0, 3, 1, 2).contiguous()
    mixed = augmix(u8, config.augmix_prob, generator)
    return translate_and_flip(mixed.float() / 255.0, generator)


@torch.no_grad()
def evaluate_teacher(
    teacher: Teacher, data: LabelledImages, class_vectors: torch.Tensor, batch_size: int = 500
) -> float:
    """Top-1 accuracy of zero-shot classification against ``class_vectors``."""
    correct = 0
    for first in range(0, len(data), batch_size):
        pixels = pixels_from_uint8(data.images[first : first + batch_size])
        pred = teacher.logits(pixels, class_vectors).argmax(1).cpu().numpy()
        correct += int((pred == data.labels[first : first + batch_size]).sum())
    return correct / max(1, len(data))
