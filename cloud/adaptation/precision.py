"""The arithmetic of the cloud's fits: bfloat16 where the hardware computes it natively.

A fit is a few Adam steps of forward and backward passes through the small device model,
and on a CPU it is compute-bound (``cdca bench perf``: the cost per sample does not fall
as a pass grows). Two things lower it without changing what is learned beyond rounding:
channels-last activations (oneDNN's native layout for convolutions) and bfloat16 autocast
on CPUs with AMX or AVX512-BF16 and on CUDA GPUs with bfloat16. The prompt parameters, the
optimiser and the loss stay in float32; only the model's activations are rounded. CPUs
without native bfloat16 emulate it slower than float32, so ``auto`` keeps float32 there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bfloat16


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (Linux's /proc/cpuinfo; False elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = set(cpuinfo.read_text(errors="replace").split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def fit_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The activations' dtype for ``precision`` (``auto``, ``fp32``, ``bf16``) on ``device``."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@contextlib.contextmanager
def autocast(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``; nothing for float32."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        yield


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images in oneDNN's (and cuDNN's) preferred layout; other tensors as they are."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
