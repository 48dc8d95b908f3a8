"""The lifecycle every adaptation method follows on a stream: predict, then adapt, never reset.

Methods receive image batches as (batch, 3, H, W) float32 in [0, 1]; the wrapped model
normalises internally (``PixelModel``), so input-space methods (prompts, augmentations)
work in pixel units. Each method counts what it costs the device: model passes over each
frame, forward and backward, so a table can say what training on the device would take.
"""

from __future__ import annotations

import abc
import copy

import torch
from torch import nn

from cloud.students.preprocess import Normalization


class PixelModel(nn.Module):
    """A student that takes [0, 1] pixels: normalisation is its first step."""

    def __init__(self, student: nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.student = student
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(normalization.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalization.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) in [0, 1] -> (batch, num_classes) logits."""
        return self.student((pixels - self.mean) / self.std)


class AdaptationMethod(abc.ABC):
    """One online, continual test-time adaptation method.

    Subclasses set ``name`` and implement ``step``; the constructor copies the model so a
    method never changes the caller's weights.
    """

    name: str = "base"
    uses_backprop: bool = False  # whether the device would need to train
    needs_source: bool = False  # whether it reads clean source images before the stream

    def __init__(self, model: PixelModel) -> None:
        self.model = copy.deepcopy(model)
        self._initial_state = copy.deepcopy(self.model.state_dict())
        self.frames = self.forwards = self.backwards = 0  # frame-passes on the device
        self.hyperparameters: dict[str, object] = {}

    def record(self, **settings: object) -> None:
        """Keep the settings this instance runs with (the benchmark writes them into the run)."""
        self.hyperparameters.update(settings)

    def count(self, frames: int = 0, forwards: int = 0, backwards: int = 0) -> None:
        """Add to the frames seen and the frame-passes spent (``forwards``: frames x passes)."""
        self.frames += frames
        self.forwards += forwards
        self.backwards += backwards

    @abc.abstractmethod
    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predict the batch, then adapt on it; returns the (batch, num_classes) prediction logits."""

    def costs(self) -> dict[str, float]:
        """Nothing goes up or down; the device's passes per frame and the memory it holds."""
        frames = max(1, self.frames)
        return {
            "upload_fraction": 0.0,
            "bytes_up_per_1000": 0.0,
            "bytes_down_per_1000": 0.0,
            "device_forwards_per_frame": self.forwards / frames,
            "device_backwards_per_frame": self.backwards / frames,
            "device_state_mb": state_bytes(self) / 2**20,
        }

    def reset(self) -> None:
        """Restore the source weights (the continual protocol never calls this mid-stream)."""
        self.model.load_state_dict(self._initial_state)


def use_batch_statistics(model: nn.Module) -> None:
    """Make every BatchNorm normalise with the current batch's statistics (BN-adapt, Tent, CoTTA)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None


def norm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every BatchNorm's scale and shift, in module order (what EATA, SAR and ROID train)."""
    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.requires_grad_(True)
            params += [module.weight, module.bias]
    return params


def state_bytes(method: object) -> int:
    """Bytes of every tensor a method keeps between batches, each storage counted once.

    Model copies, optimiser state, memory banks: what the device holds for the method.
    """
    seen: set[int] = set()
    total = 0
    # the copy kept for reset() is not device state: the continual protocol never resets
    stack: list[object] = [{k: v for k, v in vars(method).items() if k != "_initial_state"}]
    visited: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in visited:
            continue
        visited.add(id(item))
        if isinstance(item, torch.Tensor):
            key = item.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += item.untyped_storage().nbytes()
        elif isinstance(item, nn.Module):
            stack.extend(item.state_dict(keep_vars=True).values())
            stack.extend(v for v in vars(item).values() if not isinstance(v, nn.Module))
        elif isinstance(item, torch.optim.Optimizer):
            stack.extend(s for state in item.state.values() for s in state.values())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)) or type(item).__name__ == "deque":
            stack.extend(item)  # type: ignore[arg-type]
        elif hasattr(item, "__dict__") and not callable(item):
            stack.append(vars(item))
    return total


class SavedActivations:
    """``with SavedActivations() as saved: step()``; then ``saved.bytes``: what autograd kept.

    Counts every tensor saved for a backward pass during the block, each storage once: the
    activation memory training on the device costs beyond a plain forward pass (forward-only
    methods keep none).
    """

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(batch, classes) logits -> (batch,) Shannon entropy of the softmax, in nats."""
    log_p = logits.log_softmax(1)
    return -(log_p.exp() * log_p).sum(1)
