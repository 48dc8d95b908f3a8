"""Resumable training state: one file written atomically after every epoch.

Shared by every trainer in ``cloud/`` so that an interrupted ``cdca train ...`` picks up
where it stopped, and a state written with a different config is never mixed in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


def save_training_state(
    path: Path,
    config: dict[str, object],
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Write model, optimiser and schedule after ``epoch`` (0-based) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {
        "config": config,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    torch.save(state, tmp)
    tmp.replace(path)


def resume_training_state(
    path: Path,
    config: dict[str, object],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Load a state written with the same ``config``; return the epoch to start from (0 if none)."""
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    if state.get("config") != config:
        logger.warning("ignoring %s: it was written with a different training config", path)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    logger.info("resuming from %s after epoch %d", path, state["epoch"] + 1)
    return int(state["epoch"]) + 1
