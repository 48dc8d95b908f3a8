"""VPLU: visual prompt learning with uncertainty-guided updating, on the cloud's copy of the device model.

Gan et al., "Cloud-Device Collaborative Adaptation to Continual Changing Environments in
the Real-world" (U-VPA), CVPR 2023 (https://arxiv.org/abs/2212.00972); the update rule
follows the same group's SVDP code (uncertainty-modulated EMA of the prompt). Where the
prompt lives: besides the pixel prompt, the "prompts" are the device model's small inputs
(per-channel input affine, BatchNorm scale/shift and the class vectors); by default only
the encoder's BatchNorm scale/shift, which measured best (docs/uvpa.md). The device's own
batch statistics (uploaded with the samples) are replayed exactly.

One ``update``: (1) split the uploads into a training part and a held-out part; (2) a few
Adam steps on the enabled prompt parts, with an align loss (KL to the teacher, weighted
by teacher confidence) and a supervised loss (cross-entropy on confident teacher
pseudo-labels); (3) blend with the last shipped prompt by an EMA whose momentum falls as
the uploads' uncertainty rises; (4) the safety valve: ship only if agreement with the
teacher on the held-out part does not drop. ``guided=False`` (the ablation) weighs every
sample alike and keeps the momentum fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cloud.export.device_model import AdaptiveBatchNorm, DeviceModel
from protocol.config.adaptation import PARTS, VPLUConfig

__all__ = ["PARTS", "VPLU", "UpdateResult", "Uploads", "VPLUConfig", "encoder_norm_mask"]


def encoder_norm_mask(model: DeviceModel) -> torch.Tensor:
    """(2, K): 1 on the encoder's BatchNorm channels, 0 on the projector's.

    A fit changes only the encoder's scale/shift: the projector's BatchNorm (256 of the
    compact CNN's 576 channels, right before the embedding), fitted on ~100 uploads, mostly
    overfits them (docs/uvpa.md: 86.4 against 87.2 on the continual stream).
    """
    mask = torch.ones(2, model.num_norm_channels)
    for layer in model.norm_layers:
        if not layer.name.startswith("encoder."):
            mask[:, layer.offset : layer.offset + layer.channels] = 0
    return mask


@dataclass(frozen=True)
class Uploads:
    """Uploaded samples of one environment, ready for the device model.

    Attributes:
        x: (N, 3, H, W) normalised images.
        batch_stats: (2, K) BatchNorm statistics the device used for these frames' batches.
        uncertainty: (N,) device uncertainty scores in [0, 1].
        teacher_logits: (N, C) the teacher's logits for the same images.
    """

    x: torch.Tensor
    batch_stats: torch.Tensor
    uncertainty: torch.Tensor
    teacher_logits: torch.Tensor


@dataclass
class UpdateResult:
    """What one update decided."""

    shipped: bool
    prompt: dict[str, torch.Tensor]
    agreement_before: float
    agreement_after: float
    momentum: float
    losses: list[float] = field(default_factory=list)


class VPLU:
    """Learns the prompt parts for one device model copy; holds no transport state."""

    def __init__(
        self, model: DeviceModel, class_vectors: torch.Tensor, config: VPLUConfig | None = None
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.class_vectors = class_vectors.detach().float()
        self.config = config or VPLUConfig()
        norms = [m for m in self.model.modules() if isinstance(m, AdaptiveBatchNorm)]
        running = [torch.stack([m.running_mean, m.running_var]) for m in norms]
        self.running_stats = torch.cat(running, dim=1)  # (2, K)
        self.neutral = self.neutral_prompt()
        self.norm_mask = encoder_norm_mask(self.model)

    def neutral_prompt(self) -> dict[str, torch.Tensor]:
        """The prompt parts of the unadapted student (zeros and the shipped class vectors)."""
        inputs = self.model.neutral_inputs(self.class_vectors)
        return {name: inputs[name].clone() for name in PARTS}

    def replay_stats(self, batch_stats: torch.Tensor) -> torch.Tensor:
        """Device batch statistics -> ``norm_stats`` deltas that reproduce them with stat_mix = 0."""
        mean = batch_stats[0] - self.running_stats[0]
        log_var = torch.log(batch_stats[1].clamp_min(1e-8) / self.running_stats[1].clamp_min(1e-8))
        return torch.stack([mean, log_var])

    def logits(
        self, x: torch.Tensor, prompt: dict[str, torch.Tensor], norm_stats: torch.Tensor
    ) -> torch.Tensor:
        """The device model's logits for ``x`` under ``prompt`` and replayed statistics."""
        inputs = self.model.neutral_inputs(self.class_vectors, batch=len(x))
        inputs.update(prompt)
        inputs.update({"x": x, "norm_stats": norm_stats})
        del inputs["stat_mix"]  # replayed statistics only: the batch's would get weight 0
        return self.model.replayed_logits(**inputs)

    def update(
        self,
        uploads: Uploads,
        shipped: dict[str, torch.Tensor],
        extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> UpdateResult:
        """Learn from ``uploads``; return the prompt to keep on the device (new or ``shipped``).

        ``extra``: (x, target probabilities) the fit trains on besides the uploads, e.g.
        synthetic environment samples (``cloud.adaptation.synthetic``); never held out, so the
        safety valve judges on uploads alone.
        """
        cfg = self.config
        held = torch.zeros(len(uploads.x), dtype=torch.bool)
        held[cfg.holdout_every - 1 :: cfg.holdout_every] = True
        stats = self.replay_stats(uploads.batch_stats)
        target = self.targets(uploads, stats, shipped)
        x_train, target_train = uploads.x[~held], target[~held]
        if extra is not None:
            x_train, target_train = (
                torch.cat([x_train, extra[0]]),
                torch.cat([target_train, extra[1]]),
            )
        learned, losses = self._fit(x_train, target_train, stats, shipped)
        momentum = self.momentum(uploads.uncertainty)
        candidate = {
            k: momentum * shipped[k] + (1 - momentum) * learned[k] if k in learned else shipped[k]
            for k in shipped
        }
        before = self._agreement(uploads.x[held], target[held], stats, shipped)
        after = self._agreement(uploads.x[held], target[held], stats, candidate)
        ship = after >= before  # ties ship: the targets agree no less with the new prompt
        return UpdateResult(ship, candidate if ship else shipped, before, after, momentum, losses)

    def momentum(self, uncertainty: torch.Tensor) -> float:
        """Share of the old prompt kept: lower when the uploads are uncertain (SVDP's rule).

        Uncertain uploads mean the device is struggling in this environment, so the cloud
        moves faster; certain ones mean the prompt already works and should change little.
        """
        cfg = self.config
        if not cfg.guided or len(uncertainty) == 0:
            return cfg.ema_base
        return float(min(1.0, max(0.0, cfg.ema_base - cfg.ema_scale * float(uncertainty.mean()))))

    @torch.no_grad()
    def targets(
        self, uploads: Uploads, stats: torch.Tensor, shipped: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """(N, C) probabilities the device should match: the teacher's, or the ensemble.

        The ensemble weighs the teacher and the device's current view of each sample by their
        own confidence: where the teacher is weak (on Fashion-MNIST-C: fog, glass
        blur) the device's batch-normalised view often knows better, and neither alone is
        best.
        """
        teacher = uploads.teacher_logits.softmax(dim=1)
        if self.config.target == "teacher":
            return teacher
        views = [teacher, self.logits(uploads.x, shipped, stats).softmax(dim=1)]
        weights = [view.max(dim=1, keepdim=True).values for view in views]
        weighted: torch.Tensor = sum(w * view for w, view in zip(weights, views, strict=True))  # type: ignore[assignment]
        total: torch.Tensor = sum(weights)  # type: ignore[assignment]
        return weighted / total

    def _fit(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        stats: torch.Tensor,
        start: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], list[float]]:
        cfg = self.config
        params = {k: start[k].clone().requires_grad_(True) for k in cfg.parts}
        optimizer = torch.optim.Adam(list(params.values()), lr=cfg.lr)
        confidence, pseudo = target.max(dim=1)
        confident = confidence >= cfg.confidence_threshold
        # Guided: trust each sample as much as its target does (lesson 4 of the prototype:
        # the most uncertain uploads are where the teacher is also wrong).
        weight = confidence if cfg.guided else torch.ones_like(confidence)
        losses = []
        for _ in range(cfg.steps):
            student = self.logits(x, {**start, **params}, stats)
            kl = F.kl_div(student.log_softmax(1), target, reduction="none").sum(1)
            loss = cfg.align_weight * (weight * kl).sum() / weight.sum().clamp_min(1e-8)
            if confident.any():
                loss = loss + cfg.supervised_weight * F.cross_entropy(
                    student[confident], pseudo[confident]
                )
            loss = loss + cfg.l2 * sum(
                ((p - self.neutral[k]) ** 2).sum() for k, p in params.items()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self._keep_masked(params, start)
            losses.append(float(loss.detach()))
        return {k: v.detach() for k, v in params.items()}, losses

    @torch.no_grad()
    def _keep_masked(self, params: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> None:
        """Undo a step's change on the projector's BatchNorm (``encoder_norm_mask``)."""
        if "norm_affine" in params:
            norm = params["norm_affine"]
            norm.copy_(self.norm_mask * norm + (1 - self.norm_mask) * start["norm_affine"])

    @torch.no_grad()
    def _agreement(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        stats: torch.Tensor,
        prompt: dict[str, torch.Tensor],
    ) -> float:
        if len(x) == 0:
            return 0.0
        student = self.logits(x, prompt, stats).argmax(1)
        return float((student == target.argmax(1)).float().mean())
