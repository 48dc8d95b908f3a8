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
sample alike and keeps the momentum fixed. ``update_many`` does this for many devices in
shared model passes (``cloud.adaptation.batched``), each device's result its own. Fits run
on ``config.device`` (a CUDA GPU when present); what goes in and comes out stays on the CPU.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cloud.accelerator import resolve_device, to_device
from cloud.adaptation.batched import Chunk, chunks, default_chunk_samples, per_sample, split_stacked
from cloud.adaptation.precision import autocast, channels_last, fit_dtype
from cloud.export.device_model import AdaptiveBatchNorm, DeviceModel
from protocol.config.adaptation import PARTS, VPLUConfig

__all__ = [
    "PARTS",
    "VPLU",
    "FitCancelled",
    "FitRequest",
    "UpdateResult",
    "Uploads",
    "VPLUConfig",
    "encoder_norm_mask",
]


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


class FitCancelled(Exception):
    """``VPLU.stop`` was set during a fit; nothing it was fitting changed."""


@dataclass(frozen=True)
class FitRequest:
    """One device's part of a fit: its uploads, the prompt it has, and extra training samples."""

    uploads: Uploads
    shipped: dict[str, torch.Tensor]
    extra: tuple[torch.Tensor, torch.Tensor] | None = None


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
        self,
        model: DeviceModel,
        class_vectors: torch.Tensor,
        config: VPLUConfig | None = None,
        chunk_samples: int | None = None,
    ) -> None:
        """``chunk_samples``: samples per model pass when fitting many devices (None: by hardware).

        ``model`` and ``class_vectors`` on the CPU; a fit on another device fits a copy there.
        """
        self.config = config or VPLUConfig()
        self.device = resolve_device(self.config.device)
        if self.device.type != "cpu":  # the CPU model is shared (export, other fleets)
            model = copy.deepcopy(model).to(self.device)
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.class_vectors = class_vectors.detach().float().cpu()
        norms = [m for m in self.model.modules() if isinstance(m, AdaptiveBatchNorm)]
        running = [torch.stack([m.running_mean, m.running_var]) for m in norms]
        self.running_stats = torch.cat(running, dim=1).cpu()  # (2, K)
        self.neutral = self.neutral_prompt()
        # the same on the fit's device, for the hot path
        self.fit_class_vectors = to_device(self.class_vectors, self.device)
        self.fit_neutral = self._on_device(self.neutral)
        self.fit_norm_mask = to_device(encoder_norm_mask(self.model), self.device)
        self.chunk_samples = chunk_samples or default_chunk_samples(self.device)
        self.dtype = fit_dtype(self.config.precision, self.device)
        # set from another thread to end a running fit within one pass (a server stopping
        # must not wait for many devices' fits)
        self.stop = threading.Event()

    def neutral_prompt(self) -> dict[str, torch.Tensor]:
        """The prompt parts of the unadapted student (zeros and the shipped class vectors), on the CPU."""
        inputs = self.model.neutral_inputs(self.class_vectors)
        return {name: inputs[name].clone() for name in PARTS}

    def _on_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: to_device(v, self.device) for k, v in tensors.items()}

    def _request_on_device(self, request: FitRequest) -> FitRequest:
        """A request's tensors on the fit's device (one pinned copy each on a GPU)."""
        u, on = request.uploads, self.device
        uploads = Uploads(
            *(to_device(t, on) for t in (u.x, u.batch_stats, u.uncertainty, u.teacher_logits))
        )
        extra = None
        if request.extra is not None:
            extra = (to_device(request.extra[0], on), to_device(request.extra[1], on))
        return FitRequest(uploads, self._on_device(request.shipped), extra)

    def replay_stats(self, batch_stats: torch.Tensor) -> torch.Tensor:
        """Device batch statistics -> ``norm_stats`` deltas that reproduce them with stat_mix = 0."""
        mean = batch_stats[0] - self.running_stats[0]
        log_var = torch.log(batch_stats[1].clamp_min(1e-8) / self.running_stats[1].clamp_min(1e-8))
        return torch.stack([mean, log_var])

    def logits(
        self, x: torch.Tensor, prompt: dict[str, torch.Tensor], norm_stats: torch.Tensor
    ) -> torch.Tensor:
        """The device model's logits for ``x`` under ``prompt`` and replayed statistics (on the CPU)."""
        inputs = self.model.neutral_inputs(self.fit_class_vectors, batch=len(x))
        inputs.update(self._on_device(prompt))
        inputs.update(self._on_device({"x": x, "norm_stats": norm_stats}))
        del inputs["stat_mix"]  # replayed statistics only: the batch's would get weight 0
        return self.replayed_logits(inputs).cpu()

    def replayed_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's logits in the fit's precision (``cloud.adaptation.precision``), as float32."""
        with autocast(self.dtype, self.device):
            logits = self.model.replayed_logits(**{**inputs, "x": channels_last(inputs["x"])})
        return logits.float()

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
        return self.update_many([FitRequest(uploads, shipped, extra)])[0]

    def update_many(self, requests: list[FitRequest]) -> list[UpdateResult]:
        """``update`` for many devices at once, each result what its own ``update`` gives.

        The devices' samples share every model pass (``cloud.adaptation.batched``); each keeps
        its own targets, optimiser state, EMA and safety valve.
        """
        if not requests:
            return []
        cfg = self.config
        stats = [to_device(self.replay_stats(r.uploads.batch_stats), self.device) for r in requests]
        asked, requests = requests, [self._request_on_device(r) for r in requests]
        targets = self._targets_many(requests, stats)
        helds, trains = [], []
        for request, target in zip(requests, targets, strict=True):
            held = torch.zeros(len(request.uploads.x), dtype=torch.bool, device=self.device)
            held[cfg.holdout_every - 1 :: cfg.holdout_every] = True
            x_train, target_train = request.uploads.x[~held], target[~held]
            if request.extra is not None:
                x_train = torch.cat([x_train, request.extra[0]])
                target_train = torch.cat([target_train, request.extra[1]])
            helds.append(held)
            trains.append((x_train, target_train))
        shipped = [r.shipped for r in requests]
        learned, losses = self._fit_many(trains, stats, shipped)
        candidates, momenta = [], []
        for request, prompt in zip(requests, learned, strict=True):
            momentum = self.momentum(request.uploads.uncertainty)
            momenta.append(momentum)
            old = request.shipped
            candidates.append(
                {
                    k: momentum * old[k] + (1 - momentum) * prompt[k] if k in prompt else old[k]
                    for k in old
                }
            )
        held_x = [r.uploads.x[h] for r, h in zip(requests, helds, strict=True)]
        held_target = [t[h] for t, h in zip(targets, helds, strict=True)]
        before = self._agreement_many(held_x, held_target, stats, shipped)
        after = self._agreement_many(held_x, held_target, stats, candidates)
        results = []
        for i, request in enumerate(asked):
            ship = after[i] >= before[i]  # ties ship: the targets agree no less with the new prompt
            prompt = {k: v.cpu() for k, v in candidates[i].items()} if ship else request.shipped
            results.append(UpdateResult(ship, prompt, before[i], after[i], momenta[i], losses[i]))
        return results

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
        request = self._request_on_device(FitRequest(uploads, shipped))
        return self._targets_many([request], [to_device(stats, self.device)])[0].cpu()

    @torch.no_grad()
    def _targets_many(
        self, requests: list[FitRequest], stats: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        teachers = [r.uploads.teacher_logits.softmax(dim=1) for r in requests]
        if self.config.target == "teacher":
            return teachers
        views = self._logits_many(
            [r.uploads.x for r in requests], [r.shipped for r in requests], stats
        )
        out = []
        for teacher, view in zip(teachers, views, strict=True):
            device = view.softmax(dim=1)
            w_teacher = teacher.max(dim=1, keepdim=True).values
            w_device = device.max(dim=1, keepdim=True).values
            out.append((w_teacher * teacher + w_device * device) / (w_teacher + w_device))
        return out

    def _logits_many(
        self,
        xs: list[torch.Tensor],
        prompts: list[dict[str, torch.Tensor]],
        stats: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Each device's logits for its ``xs`` under its prompt and replayed statistics."""
        out: list[torch.Tensor] = []
        for chunk, logits in self._chunk_logits(xs, prompts, stats):
            out.extend(logits.split([len(x) for x in xs[chunk.first : chunk.last]]))
        return out

    def _chunk_logits(
        self,
        xs: list[torch.Tensor],
        prompts: list[dict[str, torch.Tensor]],
        stats: list[torch.Tensor],
        trained: dict[str, torch.Tensor] | None = None,
    ) -> Iterator[tuple[Chunk, torch.Tensor]]:
        """Chunk by chunk: the chunk and its samples' logits (``trained``: stacked parts to learn)."""
        trained = trained or {}
        stacked, shared = split_stacked(prompts, tuple(k for k in PARTS if k not in trained))
        stacked.update(trained)
        stacked["norm_stats"] = torch.stack(stats)
        neutral = self.model.neutral_inputs(self.fit_class_vectors)
        shared = {"norm_stats": neutral["norm_stats"], **shared}
        for chunk in chunks(xs, self.chunk_samples):
            if self.stop.is_set():
                raise FitCancelled("the fit was stopped (the server is shutting down)")
            if not len(chunk.x):  # e.g. no held-out samples yet
                yield chunk, chunk.x.new_zeros(0, len(self.class_vectors))
                continue
            inputs = per_sample(chunk, stacked, shared)
            yield chunk, self.replayed_logits({"x": chunk.x, **inputs})

    def _fit_many(
        self,
        trains: list[tuple[torch.Tensor, torch.Tensor]],
        stats: list[torch.Tensor],
        starts: list[dict[str, torch.Tensor]],
    ) -> tuple[list[dict[str, torch.Tensor]], list[list[float]]]:
        """Adam on every device's prompt parts at once; the loss is a sum of per-device losses."""
        cfg = self.config
        params = {
            k: torch.stack([s[k] for s in starts]).clone().requires_grad_(True) for k in cfg.parts
        }
        start_stacked = {k: v.detach().clone() for k, v in params.items()}
        optimizer = torch.optim.Adam(list(params.values()), lr=cfg.lr)
        xs = [x for x, _ in trains]
        terms = [self._loss_terms(target) for _, target in trains]
        losses = torch.zeros(cfg.steps, len(trains), device=self.device)
        for step in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            for chunk, student in self._chunk_logits(xs, starts, stats, params):
                loss = self._chunk_loss(chunk, student, terms, params)
                loss.sum().backward()
                losses[step, chunk.first : chunk.last] = loss.detach()
            optimizer.step()
            self._keep_masked(params, start_stacked)
        learned = [{k: v[i].detach() for k, v in params.items()} for i in range(len(trains))]
        return learned, losses.T.cpu().tolist()

    def _loss_terms(self, target: torch.Tensor) -> _LossTerms:
        confidence, pseudo = target.max(dim=1)
        # Guided: trust each sample as much as its target does (lesson 4 of the prototype:
        # the most uncertain uploads are where the teacher is also wrong).
        weight = confidence if self.config.guided else torch.ones_like(confidence)
        return _LossTerms(target, weight, pseudo, confidence >= self.config.confidence_threshold)

    def _chunk_loss(
        self,
        chunk: Chunk,
        student: torch.Tensor,
        terms: list[_LossTerms],
        params: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """(devices,) each chunk device's loss: weighted KL, confident cross-entropy, L2."""
        cfg = self.config
        mine = terms[chunk.first : chunk.last]
        target = torch.cat([t.target for t in mine])
        weight = torch.cat([t.weight for t in mine])
        confident = torch.cat([t.confident for t in mine]).float()
        kl = F.kl_div(student.log_softmax(1), target, reduction="none").sum(1)
        align = chunk.per_device(weight * kl) / chunk.per_device(weight).clamp_min(1e-8)
        pseudo = torch.cat([t.pseudo for t in mine])
        ce = F.cross_entropy(student, pseudo, reduction="none") * confident
        supervised = chunk.per_device(ce) / chunk.per_device(confident).clamp_min(1.0)
        l2 = sum(
            ((p[chunk.first : chunk.last] - self.fit_neutral[k]) ** 2).flatten(1).sum(1)
            for k, p in params.items()
        )
        return cfg.align_weight * align + cfg.supervised_weight * supervised + cfg.l2 * l2

    @torch.no_grad()
    def _keep_masked(self, params: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> None:
        """Undo a step's change on the projector's BatchNorm (``encoder_norm_mask``)."""
        if "norm_affine" in params:
            norm = params["norm_affine"]
            mask = self.fit_norm_mask
            norm.copy_(mask * norm + (1 - mask) * start["norm_affine"])

    @torch.no_grad()
    def _agreement_many(
        self,
        xs: list[torch.Tensor],
        targets: list[torch.Tensor],
        stats: list[torch.Tensor],
        prompts: list[dict[str, torch.Tensor]],
    ) -> list[float]:
        """Per device: the share of its held-out samples where prompt and target agree."""
        logits = self._logits_many(xs, prompts, stats)
        return [
            float((student.argmax(1) == target.argmax(1)).float().mean()) if len(x) else 0.0
            for x, student, target in zip(xs, logits, targets, strict=True)
        ]


@dataclass(frozen=True)
class _LossTerms:
    """One device's fit targets: probabilities, sample weights, pseudo-labels, which are confident."""

    target: torch.Tensor
    weight: torch.Tensor
    pseudo: torch.Tensor
    confident: torch.Tensor
