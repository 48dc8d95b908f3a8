"""Supervised training of a student on clean source images, resumable epoch by epoch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloud.data.labelled import LabelledImages
from cloud.resumable import resume_training_state, save_training_state
from cloud.students.preprocess import Normalization

ProgressFn = Callable[[int, int, float], None]  # (epoch, step, loss)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of clean supervised training."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int = 2


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 px (zero padding) and horizontal flip, per image.

    Deliberately mild and disjoint from every test corruption: the student is the
    clean-trained source model.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = torch.randint(0, 5, (n, 2), generator=generator).tolist()
    shifted = torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    )
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), shifted.flip(3), shifted)


def evaluate(
    model: nn.Module, data: LabelledImages, norm: Normalization, batch_size: int = 512
) -> float:
    """Top-1 accuracy in eval mode (running BN statistics)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = norm.to_tensor(data.images[start : start + batch_size])
            pred = model(x).argmax(1).numpy()
            correct += int((pred == data.labels[start : start + batch_size]).sum())
    return correct / max(1, len(data))


def train_supervised(
    model: nn.Module,
    data: LabelledImages,
    norm: Normalization,
    config: TrainConfig,
    state_path: Path,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """Train ``model`` with cross-entropy, saving a resumable state after every epoch.

    If ``state_path`` holds a state from an earlier, interrupted run with the same
    config, training continues from the epoch after it.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = int(np.ceil(len(data) / config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    start_epoch = resume_training_state(state_path, vars_of(config), model, optimizer, scheduler)
    for epoch in range(start_epoch, config.epochs):
        _train_epoch(model, data, norm, config, optimizer, scheduler, epoch, progress)
        save_training_state(state_path, vars_of(config), epoch, model, optimizer, scheduler)
    model.eval()
    return model


def _train_epoch(
    model: nn.Module,
    data: LabelledImages,
    norm: Normalization,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    progress: ProgressFn | None,
) -> None:
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = torch.randperm(len(data), generator=generator).numpy()
    for step, start in enumerate(range(0, len(data), config.batch_size)):
        idx = np.sort(order[start : start + config.batch_size])
        x = augment(norm.to_tensor(data.images[idx]), generator)
        y = torch.from_numpy(data.labels[idx])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if progress:
            progress(epoch, step, float(loss.detach()))


def vars_of(config: TrainConfig) -> dict[str, object]:
    """The config as a plain dict (what the resumable state stores)."""
    return dict(vars(config))
