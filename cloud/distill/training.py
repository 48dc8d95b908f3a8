"""Unsupervised distillation: KL between teacher and student logits on unlabelled source images.

The teacher's logits for every training image (and its mirror image) are computed once;
labels are never read. Loss (PromptKD, tau = 1): ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``
averaged over the batch (PromptKD divides a summed KL by batch * classes and multiplies by
1000; ``batchmean`` with weight 1 is the same up to a constant scale).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cloud.distill.student import DistilledStudent
from cloud.resumable import resume_training_state, save_training_state
from cloud.students.preprocess import Normalization, pixels_from_uint8
from cloud.teacher.teacher import Teacher

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class DistillConfig:
    """Optimisation of the student and projector."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    temperature: float = 1.0
    seed: int = 0
    threads: int = 2


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``tau^2 * KL(teacher || student)`` with batch-mean reduction."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher_prob = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher_prob, reduction="batchmean") * temperature**2


@torch.no_grad()
def teacher_logits(
    teacher: Teacher, images: np.ndarray, class_vectors: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, num_classes) teacher logits, on the CPU."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = pixels_from_uint8(images[start : start + batch_size])
        out.append(teacher.logits(chunk, class_vectors).cpu())
    return torch.cat(out)


def distill(
    student: DistilledStudent,
    images: np.ndarray,
    targets: torch.Tensor,
    class_vectors: torch.Tensor,
    norm: Normalization,
    config: DistillConfig,
    state_path: Path,
    progress: ProgressFn | None = None,
) -> list[float]:
    """Train ``student`` to match ``targets`` (teacher logits of ``images``); returns loss per epoch.

    Args:
        student: encoder + projector; trained in place.
        images: (N, H, W, 3) uint8 unlabelled images; the second half of ``targets`` may hold
            the logits of the mirrored images (then len(targets) == 2 * N).
        targets: (N or 2N, num_classes) teacher logits.
        class_vectors: (num_classes, embed_dim) teacher class vectors, fixed.
        norm: the student's input normalisation.
        config: optimisation settings.
        state_path: resumable state, written after every epoch.
        progress: called after every step with (epoch, step, loss).
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = int(np.ceil(len(images) / config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps
    )
    start = resume_training_state(state_path, asdict(config), student, optimizer, scheduler)
    mirrored = len(targets) == 2 * len(images)
    history = []
    for epoch in range(start, config.epochs):
        student.train()
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=generator).numpy()
        total = 0.0
        for step, first in enumerate(range(0, len(images), config.batch_size)):
            idx = np.sort(order[first : first + config.batch_size])
            x = norm.to_tensor(images[idx])
            target = targets[idx]
            if (
                mirrored
            ):  # half of the batch sees the mirror image, with the mirror's teacher logits
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
                target = torch.where(flip.view(-1, 1), targets[idx + len(images)], target)
            loss = distillation_loss(student(x, class_vectors), target, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            if progress:
                progress(epoch, step, float(loss.detach()))
        history.append(total / steps)
        save_training_state(state_path, asdict(config), epoch, student, optimizer, scheduler)
    student.eval()
    return history
