"""How far each way of steering the device could take it: fitted on true labels, not on a cloud target.

U-VPA (Gan et al., CVPR 2023, https://arxiv.org/abs/2212.00972) can only move the device as
far as the parameters the cloud ships reach. This measures that reach per domain and per
*parameterisation*: the parameters are fitted with Adam on labelled images of a domain
(``ceiling_data``: the domain's own first frames, the cloud's clean images rendered like
them, or the clean images under the true corruption) with the device's own batch statistics
live, as on the device, and scored on the domain's later frames next to BN-adapt (the
neutral prompt). A label fit is an upper reference, not a method: if a parameterisation
fitted on labels stays below a bar, no cloud target can reach that bar through it.

Parameterisations: the prompt parts the device graph takes today (``norm_affine``, alone or
with ``input_affine``, ``class_vectors`` or the pixel ``prompt``), two that would need a new
graph (every BatchNorm including the projector's; low-rank residual adapters after each
encoder BatchNorm, after LoRA, Hu et al., ICLR 2022, https://arxiv.org/abs/2106.09685), and
every weight of the student (what shipping a fine-tuned model would allow).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cloud.adaptation.vplu import encoder_norm_mask
from cloud.export.device_model import AdaptiveBatchNorm, DeviceModel
from protocol.errors import ConfigError

FLOAT_BYTES = 4  # every part ships as float32


@dataclass(frozen=True)
class Parameterisation:
    """What the cloud would fit and ship.

    Attributes:
        name: the key ``--parameterisations`` takes.
        description: one line for the table.
        parts: device-model inputs fitted (``norm_affine`` masked to ``norm_scope``).
        norm_scope: ``encoder`` (U-VPA's cloud) or ``all`` BatchNorms' scale/shift.
        adapter_rank: rank of the residual adapters after each encoder BatchNorm (0: none).
        all_weights: fit every weight of the student as well (a reference, not a prompt).
        lr: Adam's step size (adapters and weights overfit 512 frames at the parts' 1e-2).
        in_device_graph: whether the exported device model takes it today.
    """

    name: str
    description: str
    parts: tuple[str, ...] = ("norm_affine",)
    norm_scope: str = "encoder"
    adapter_rank: int = 0
    all_weights: bool = False
    lr: float = 1e-2
    in_device_graph: bool = True


PARAMETERISATIONS: dict[str, Parameterisation] = {
    p.name: p
    for p in (
        Parameterisation("norm_affine", "encoder BatchNorm scale/shift (U-VPA's prompt)"),
        Parameterisation(
            "norm_affine_all",
            "every BatchNorm's scale/shift, the projector's too",
            norm_scope="all",
        ),
        Parameterisation(
            "norm_affine+input_affine",
            "+ per-channel input scale/shift",
            parts=("norm_affine", "input_affine"),
        ),
        Parameterisation(
            "norm_affine+class_vectors",
            "+ the class vectors",
            parts=("norm_affine", "class_vectors"),
        ),
        Parameterisation(
            "norm_affine+prompt", "+ an additive pixel prompt", parts=("norm_affine", "prompt")
        ),
        Parameterisation(
            "norm_affine+adapters_r8",
            "+ rank-8 residual adapters after each encoder BatchNorm",
            adapter_rank=8,
            lr=1e-3,
            in_device_graph=False,
        ),
        Parameterisation(
            "all_weights",
            "every weight of the student (a new model, not a prompt)",
            all_weights=True,
            lr=1e-3,
            in_device_graph=False,
        ),
    )
}


def parameterisation(name: str) -> Parameterisation:
    """The registered parameterisation ``name``; a clear error naming the others."""
    if name not in PARAMETERISATIONS:
        raise ConfigError(
            f"unknown parameterisation {name!r}; choose from {', '.join(PARAMETERISATIONS)}"
        )
    return PARAMETERISATIONS[name]


@dataclass
class Fitted:
    """One fit's result: the prompt parts, the adapters, and the model they apply to."""

    model: DeviceModel
    prompt: dict[str, torch.Tensor]
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]
    weights_trained: bool = False

    def shipped_bytes(self) -> int:
        """float32 bytes a device would receive for this fit (all weights: the student too)."""
        count = sum(p.numel() for p in self.prompt.values())
        count += sum(down.numel() + up.numel() for down, up in self.adapters.values())
        if self.weights_trained:
            count += sum(p.numel() for p in self.model.parameters())
        return FLOAT_BYTES * count


class PromptCeiling:
    """Fits one parameterisation of a device model on labelled images; scores on others.

    Args:
        model: the device model (never changed: an all-weights fit trains a copy).
        class_vectors: the shipped class vectors.
        steps: Adam steps per fit.
        batch_size: images per step, and per scored batch (the device's batch).
        seed: which images each step draws, and the adapters' starting projections.
    """

    def __init__(
        self,
        model: DeviceModel,
        class_vectors: torch.Tensor,
        steps: int = 150,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self.neutral = model.neutral_inputs(class_vectors.detach().float())
        self.neutral["stat_mix"] = torch.ones(1)  # the device's own batch statistics

    def unadapted(self) -> Fitted:
        """BN-adapt: the neutral prompt on the shipped model."""
        return Fitted(self.model, {}, {})

    def fit(self, x: torch.Tensor, y: torch.Tensor, how: Parameterisation) -> Fitted:
        """Adam on cross-entropy to the labels ``y``, over random device-sized batches."""
        model = copy.deepcopy(self.model) if how.all_weights else self.model
        prompt = {k: self.neutral[k].clone().requires_grad_(True) for k in how.parts}
        adapters = self._fresh_adapters(model, how.adapter_rank)
        trainable = [*prompt.values(), *(t for pair in adapters.values() for t in pair)]
        if how.all_weights:
            trainable += [p.requires_grad_(True) for p in model.parameters()]
        mask = self._norm_mask(model, how.norm_scope)
        optimizer = torch.optim.Adam(trainable, lr=how.lr)
        generator = torch.Generator().manual_seed(self.seed)
        fitted = Fitted(model, prompt, adapters)
        for _ in range(self.steps):
            pick = torch.randperm(len(x), generator=generator)[: self.batch_size]
            loss = F.cross_entropy(self.logits(fitted, x[pick]), y[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if "norm_affine" in prompt and prompt["norm_affine"].grad is not None:
                prompt["norm_affine"].grad.mul_(mask)  # Adam leaves masked entries neutral
            optimizer.step()
        model.requires_grad_(False)
        return Fitted(
            model,
            {k: v.detach() for k, v in prompt.items()},
            {k: (d.detach(), u.detach()) for k, (d, u) in adapters.items()},
            how.all_weights,
        )

    def logits(self, fitted: Fitted, x: torch.Tensor) -> torch.Tensor:
        """The device's logits for one batch under ``fitted``."""
        with _adapters_attached(fitted.model, fitted.adapters):
            return fitted.model(**{**self.neutral, **fitted.prompt, "x": x})[0]

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, fitted: Fitted) -> float:
        """Share right, in device batches, each normalised with its own statistics."""
        hits = 0
        for start in range(0, len(x), self.batch_size):
            batch = slice(start, start + self.batch_size)
            hits += int((self.logits(fitted, x[batch]).argmax(1) == y[batch]).sum())
        return hits / max(1, len(x))

    def _fresh_adapters(
        self, model: DeviceModel, rank: int
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per encoder BatchNorm: a random down-projection and a zero up-projection (LoRA's start)."""
        if not rank:
            return {}
        generator = torch.Generator().manual_seed(self.seed)
        adapters = {}
        for layer in model.norm_layers:
            if layer.name.startswith("encoder."):
                r = min(rank, layer.channels)
                down = torch.randn(layer.channels, r, generator=generator) / layer.channels**0.5
                up = torch.zeros(layer.channels, r)
                adapters[layer.name] = (down.requires_grad_(True), up.requires_grad_(True))
        return adapters

    @staticmethod
    def _norm_mask(model: DeviceModel, scope: str) -> torch.Tensor:
        if scope == "encoder":
            return encoder_norm_mask(model)
        return torch.ones(2, model.num_norm_channels)


@contextmanager
def _adapters_attached(
    model: DeviceModel, adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[None]:
    """Add ``up @ down.T`` of each BatchNorm's output to it, as a residual 1x1 convolution."""
    if not adapters:
        yield
        return
    handles = []
    for module in model.modules():
        if isinstance(module, AdaptiveBatchNorm) and module.layer.name in adapters:
            down, up = adapters[module.layer.name]
            handles.append(module.register_forward_hook(_residual(down, up)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _residual(
    down: torch.Tensor, up: torch.Tensor
) -> Callable[[torch.nn.Module, object, torch.Tensor], torch.Tensor]:
    def hook(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        low = torch.einsum("nchw,cr->nrhw", out, down)
        return out + torch.einsum("nrhw,cr->nchw", low, up)

    return hook
