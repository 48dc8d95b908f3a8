"""``DeviceModel``: the distilled student with every adaptation knob as an explicit input.

What the device runs (and the cloud can steer without shipping weights):

* ``prompt`` (1, 3, H, W): additive pixel prompt, broadcast over the batch (U-VPA/VDP).
* ``input_affine`` (2, 3): per-channel input transform ``x * (1 + a) + b``.
* ``norm_affine`` (2, K): every BatchNorm's scale and shift, ``gamma * (1 + s)``, ``beta + d``.
* ``norm_stats`` (2, K): reference statistics ``mean + dm``, ``var * exp(dv)``.
* ``stat_mix`` (1,): blend of reference and current-batch statistics (0 = reference only,
  1 = batch only; forward-only, no training on the device).
* ``class_vectors`` (C, D): the teacher's class vectors; new ones need no new model file.

Outputs: ``logits`` (N, C), ``embedding`` (N, D) and ``batch_stats`` (2, K), the batch mean
and variance every BatchNorm saw (what the device uploads with its samples).

All zeros (and the shipped class vectors) reproduce the distilled student exactly. K is
the total channel count of the student's BatchNorm layers (the encoder's 2d ones, then the
projector's 1d one), in module order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cloud.distill.student import DistilledStudent
from protocol.errors import DataError


@dataclass(frozen=True)
class NormLayer:
    """One BatchNorm's slice of the K-long norm inputs."""

    name: str
    offset: int
    channels: int


class _Knobs:
    """The current call's adaptation tensors, read by every ``AdaptiveBatchNorm``."""

    norm_affine: torch.Tensor
    norm_stats: torch.Tensor
    stat_mix: torch.Tensor
    observed: list[torch.Tensor]  # each layer's (2, channels) batch mean/var, in order
    fused: bool = False  # normalise with one batch_norm call (for export; see AdaptiveBatchNorm)
    observe: bool = True  # compute batch statistics (False: reference only; see replayed_logits)


class AdaptiveBatchNorm(nn.Module):
    """A frozen BatchNorm (1d or 2d) whose statistics and affine come partly from the call's inputs."""

    def __init__(
        self, source: nn.BatchNorm1d | nn.BatchNorm2d, layer: NormLayer, knobs: _Knobs
    ) -> None:
        super().__init__()
        if source.running_mean is None or source.running_var is None:
            raise DataError(
                f"{layer.name}: BatchNorm without running statistics cannot be exported"
            )
        self.register_buffer("running_mean", source.running_mean.detach().clone())
        self.register_buffer("running_var", source.running_var.detach().clone())
        self.register_buffer("weight", source.weight.detach().clone())
        self.register_buffer("bias", source.bias.detach().clone())
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.eps = source.eps
        self.layer = layer
        self.knobs = knobs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with blended statistics, then apply the adjusted affine."""
        lo, hi = self.layer.offset, self.layer.offset + self.layer.channels
        knobs = self.knobs
        if knobs.norm_affine.ndim == 3:  # (N, 2, K): one prompt per sample (replay only)
            return self._per_sample(
                x, knobs.norm_affine[:, :, lo:hi], knobs.norm_stats[:, :, lo:hi]
            )
        ref_mean = self.running_mean + knobs.norm_stats[0, lo:hi]
        ref_var = self.running_var * torch.exp(knobs.norm_stats[1, lo:hi])
        shape = (1, -1, *([1] * (x.ndim - 2)))
        mean, var = self._blend(x, ref_mean, ref_var) if knobs.observe else (ref_mean, ref_var)
        weight = self.weight * (1 + knobs.norm_affine[0, lo:hi])
        bias = self.bias + knobs.norm_affine[1, lo:hi]
        if knobs.fused:
            # Exported as one BatchNormalization node: one pass over x where a Mul and an Add
            # take two (11 % of the device's time at batch 64). Not for the cloud's training:
            # eval-mode batch_norm passes no gradient to the statistics it is given.
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        scale = weight / torch.sqrt(var + self.eps)
        return x * scale.view(shape) + (bias - mean * scale).view(shape)

    def _per_sample(
        self, x: torch.Tensor, affine: torch.Tensor, stats: torch.Tensor
    ) -> torch.Tensor:
        """Reference statistics and affine per sample: many devices' fits in one batch."""
        mean = self.running_mean + stats[:, 0]  # (N, channels)
        var = self.running_var * torch.exp(stats[:, 1])
        scale = self.weight * (1 + affine[:, 0]) / torch.sqrt(var + self.eps)
        shift = self.bias + affine[:, 1] - mean * scale
        shape = (len(x), -1, *([1] * (x.ndim - 2)))
        return x * scale.view(shape) + shift.view(shape)

    def _blend(
        self, x: torch.Tensor, ref_mean: torch.Tensor, ref_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Record this batch's statistics; blend them with the reference ones by ``stat_mix``."""
        dims = (0, *range(2, x.ndim))  # all but channels: (N,) for 1d, (N, H, W) for 2d
        shape = (1, -1, *([1] * (x.ndim - 2)))
        batch_mean = x.mean(dim=dims)
        centred = x - batch_mean.view(shape)
        batch_var = (centred * centred).mean(dim=dims)  # a Mul: onnxruntime's Pow is slower
        self.knobs.observed.append(torch.stack([batch_mean, batch_var]))
        mix = self.knobs.stat_mix.reshape(())
        return (1 - mix) * ref_mean + mix * batch_mean, (1 - mix) * ref_var + mix * batch_var


class DeviceModel(nn.Module):
    """The exported graph: (x, prompt, input_affine, norm_affine, norm_stats, stat_mix, class_vectors)."""

    INPUTS = (
        "x",
        "prompt",
        "input_affine",
        "norm_affine",
        "norm_stats",
        "stat_mix",
        "class_vectors",
    )
    OUTPUTS = ("logits", "embedding", "batch_stats")

    def __init__(
        self, student: DistilledStudent, for_export: bool = False, image_size: int = 32
    ) -> None:
        super().__init__()
        self.student = eval_copy(student)
        self.image_size = image_size  # of x and the pixel prompt (the checkpoint's data.image_size)
        self.knobs = _Knobs()
        self.knobs.fused = for_export
        self.norm_layers = self._swap_batchnorms()

    @property
    def num_norm_channels(self) -> int:
        """K: the length of the norm inputs."""
        return sum(layer.channels for layer in self.norm_layers)

    def _swap_batchnorms(self) -> list[NormLayer]:
        layers: list[NormLayer] = []
        offset = 0
        # Encoder and projector alike: the projector's BatchNorm1d carries shift too (with
        # batch statistics there, BN-adapt on the distilled student gains ~3 points).
        for name, module in list(self.student.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    full = f"{name}.{child_name}" if name else child_name
                    layer = NormLayer(full, offset, child.num_features)
                    setattr(module, child_name, AdaptiveBatchNorm(child, layer, self.knobs))
                    layers.append(layer)
                    offset += child.num_features
        return layers

    def forward(
        self,
        x: torch.Tensor,
        prompt: torch.Tensor,
        input_affine: torch.Tensor,
        norm_affine: torch.Tensor,
        norm_stats: torch.Tensor,
        stat_mix: torch.Tensor,
        class_vectors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, 3, H, W) normalised images -> logits (batch, C), embedding (batch, D), batch_stats (2, K).

        ``batch_stats`` holds the mean and variance each BatchNorm saw in this batch; the device
        uploads them (2K floats) so the cloud can reproduce its exact normalisation.
        """
        self.knobs.norm_affine = norm_affine
        self.knobs.norm_stats = norm_stats
        self.knobs.stat_mix = stat_mix
        self.knobs.observed = []
        embedding = F.normalize(
            self.student.projector(
                self.student.encoder.forward_features(transform_input(x, prompt, input_affine))
            ),
            dim=-1,
        )
        if class_vectors.ndim == 3:  # (N, C, D): each sample's own class vectors
            logits = self.student.logit_scale * torch.einsum("nd,ncd->nc", embedding, class_vectors)
        else:
            logits = self.student.logit_scale * embedding @ class_vectors.T
        observed = self.knobs.observed
        return logits, embedding, torch.cat(observed, dim=1) if observed else torch.empty(2, 0)

    def replayed_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits for every input but ``stat_mix``, with it 0 and no batch statistics computed.

        Per-sample prompts (the cloud fitting many devices in one batch): ``norm_affine`` and
        ``norm_stats`` (N, 2, K), ``input_affine`` (N, 2, 3), ``prompt`` (N, 3, H, W) and
        ``class_vectors`` (N, C, D) give each sample its own device's values.

        What the cloud trains through: it replays the device's statistics in ``norm_stats``,
        so the blend gives the batch statistics weight 0 and the logits are the same, but
        computing them and their zero gradients took about a fifth of a VPLU update on a
        full buffer.
        """
        self.knobs.observe = False
        try:
            return self(**inputs, stat_mix=torch.zeros(1, device=inputs["x"].device))[0]
        finally:
            self.knobs.observe = True

    def neutral_inputs(
        self, class_vectors: torch.Tensor, batch: int = 1
    ) -> dict[str, torch.Tensor]:
        """Inputs that reproduce the distilled student (zeros everywhere but x and class vectors).

        On the class vectors' device.
        """
        size, on = self.image_size, class_vectors.device
        return {
            "x": torch.zeros(batch, 3, size, size, device=on),
            "prompt": torch.zeros(1, 3, size, size, device=on),
            "input_affine": torch.zeros(2, 3, device=on),
            "norm_affine": torch.zeros(2, self.num_norm_channels, device=on),
            "norm_stats": torch.zeros(2, self.num_norm_channels, device=on),
            "stat_mix": torch.zeros(1, device=on),
            "class_vectors": class_vectors.float(),
        }


def transform_input(
    x: torch.Tensor, prompt: torch.Tensor, input_affine: torch.Tensor
) -> torch.Tensor:
    """``x * (1 + a) + b + prompt`` per channel; ``input_affine`` (2, 3) or (N, 2, 3) per sample."""
    if input_affine.ndim == 3:  # (N, 2, 3): each sample its own device's values
        per_sample = input_affine.view(-1, 2, 3, 1, 1)
        return x * (1 + per_sample[:, 0]) + per_sample[:, 1] + prompt
    return x * (1 + input_affine[0].view(1, 3, 1, 1)) + input_affine[1].view(1, 3, 1, 1) + prompt


def eval_copy(student: DistilledStudent) -> DistilledStudent:
    """A frozen eval-mode copy of the student (the exported graphs must not change the original)."""
    import copy

    return copy.deepcopy(student).eval().requires_grad_(False)
