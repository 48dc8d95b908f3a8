"""Where the cloud computes (CUDA when present, else the CPU) and how inputs get there.

The teacher (``[teacher] device``) and the prompt fits (``[adaptation.vplu] device``) each
name a device; ``auto`` takes the first CUDA GPU torch sees. Inputs arrive on the CPU
(decoded uploads, rendered samples); ``to_device`` copies them through pinned memory
without blocking, so a batch's copy overlaps the GPU's work on the one before.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: a pinned, non-blocking copy from the CPU to a GPU."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a GPU runs asynchronously; timings need this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
