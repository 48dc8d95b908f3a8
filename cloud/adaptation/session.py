"""One device's adaptation state in the cloud: its upload buffer, prompt bank and VPLU learner.

This is what the gRPC server, the Flower app and the simulations call for every batch of
uploads a device sends (Gan et al., U-VPA, CVPR 2023, https://arxiv.org/abs/2212.00972).
No transport code: callers hand in tensors and get back the prompt to ship, if any.

Per batch: a reported shift folds the ending environment into the shared prompt and empties
the buffer (a buffer that outlives its environment mixes two shifts), seeded with uploads
other devices made in the same environment when the fleet has them; the teacher labels
the new uploads once; VPLU refits the current environment's prompt on the whole buffer
(plus, with a renderer, the cloud's clean labelled images rendered like the buffer),
replaying the device's average batch statistics; a prompt that passes the safety valve is
returned for delivery. A fleet fits many devices in one pass: ``take`` stops before the fit,
``VPLU.update_many`` runs every device's, and ``finish`` takes each result.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cloud.adaptation.environments import PooledUploads
from cloud.adaptation.guard import prompt_problem, stats_problem
from cloud.adaptation.prompt_bank import Prompt, PromptBank
from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.adaptation.vplu import VPLU, FitRequest, UpdateResult, Uploads
from cloud.students.preprocess import pixels_to_uint8, unit_pixels
from protocol.config.adaptation import SessionConfig
from protocol.errors import DataError

__all__ = ["AdaptationSession", "PendingFit", "SessionConfig", "UploadBatch"]
log = logging.getLogger("cdca.cloud")


@dataclass(frozen=True)
class UploadBatch:
    """What one device batch sends up.

    Attributes:
        pixels: (n, 3, H, W) selected frames in [0, 1] (n may be 0).
        uncertainty: (n,) the device's scores for them, in [0, 1].
        batch_stats: (2, K) the normalisation statistics the device used for that batch.
        shift: the device's shift detector fired on this batch.
    """

    pixels: torch.Tensor
    uncertainty: torch.Tensor
    batch_stats: torch.Tensor
    shift: bool = False


@dataclass(frozen=True)
class PendingFit:
    """A batch taken in: whether the device must switch prompts already, and the fit to run."""

    changed: bool
    request: FitRequest | None


@dataclass(frozen=True)
class _Sample:
    x: torch.Tensor
    teacher_logits: torch.Tensor
    uncertainty: float
    batch_stats: torch.Tensor
    frame: torch.Tensor  # (3, H, W) uint8, what the device sent: pooled for the next device
    pooled: bool = False  # seeded from the environment's pool, not uploaded in this stay


class AdaptationSession:
    """Cloud-side U-VPA for one device.

    Args:
        vplu: the learner over the cloud's copy of this device's model.
        teacher: [0, 1] pixels -> teacher logits over the device's classes.
        normalize: [0, 1] pixels -> the device model's input.
        bank: the device's prompts (shared and environment-specific).
        config: buffer and schedule.
        synthetic: renders the cloud's clean labelled images like the buffer's uploads
            (``cloud.adaptation.synthetic``); they join every fit. None: uploads only.
    """

    def __init__(
        self,
        vplu: VPLU,
        teacher: Callable[[torch.Tensor], torch.Tensor],
        normalize: Callable[[torch.Tensor], torch.Tensor],
        bank: PromptBank | None = None,
        config: SessionConfig | None = None,
        synthetic: EnvironmentRenderer | None = None,
    ) -> None:
        self.vplu, self.teacher, self.normalize = vplu, teacher, normalize
        self.synthetic = synthetic
        self.bank = bank or PromptBank(vplu.neutral_prompt())
        self.config = config or SessionConfig()
        self.buffer: deque[_Sample] = deque(maxlen=self.config.buffer_size)
        self.uploads = self.updates = self.shipped = self.shifts = 0
        self.rejected_fits = 0  # fits whose prompt failed the guard: the device keeps its last
        self.synthetic_samples = 0  # rendered clean images the fits trained on
        self.seconds = 0.0

    def ingest(
        self,
        batch: UploadBatch,
        start: Prompt | None = None,
        pooled: PooledUploads | None = None,
        fit: bool = True,
    ) -> Prompt | None:
        """Take one batch of uploads; return the prompt the device should switch to, if any.

        ``start``: on a reported shift, the prompt the new environment starts from (e.g. a
        remembered environment's, from ``cloud.adaptation.fleet``) instead of the shared one.
        ``pooled``: on a reported shift, uploads made in that environment before (by any
        device); they seed the buffer, and this device's own uploads push them out.
        ``fit``: False only buffers the uploads (and still restarts on a shift): a server
        that fell behind fits once on the newest of a device's waiting batches.
        """
        self.check(batch)
        began = time.perf_counter()
        with torch.no_grad():
            logits = self.teacher(batch.pixels).float() if len(batch.pixels) else None
        self.seconds += time.perf_counter() - began
        pending = self.take(batch, logits, start, pooled, fit)
        began = time.perf_counter()
        result = self.vplu.update_many([pending.request])[0] if pending.request else None
        self.seconds += time.perf_counter() - began
        return self.finish(pending, result)

    def check(self, batch: UploadBatch) -> None:
        """Raise ``DataError`` for a batch this device's model cannot take (it costs nothing)."""
        _check(batch, self.vplu.running_stats)

    def take(
        self,
        batch: UploadBatch,
        teacher_logits: torch.Tensor | None,
        start: Prompt | None = None,
        pooled: PooledUploads | None = None,
        fit: bool = True,
    ) -> PendingFit:
        """``ingest`` up to the fit: the fit to run, if any, for ``finish`` to take the result of.

        ``batch`` passed ``check`` (the caller checks before the teacher sees it);
        ``teacher_logits``: the teacher's (n, C) logits for the batch's pixels, computed by
        the caller (one teacher pass for many devices' batches).
        """
        began = time.perf_counter()
        try:
            return self._take(batch, teacher_logits, start, pooled, fit)
        finally:
            self.seconds += time.perf_counter() - began

    def finish(self, pending: PendingFit, result: UpdateResult | None) -> Prompt | None:
        """The prompt the device should switch to after ``pending``'s fit gave ``result``."""
        changed = pending.changed
        if result is not None:
            changed = self._accept(result) or changed
        return self.bank.current() if changed else None

    def stay_uploads(self) -> PooledUploads | None:
        """This environment's own uploads still in the buffer (None: none)."""
        own = [s for s in self.buffer if not s.pooled]
        if not own:
            return None
        return PooledUploads(
            torch.stack([s.frame for s in own]),
            torch.stack([s.teacher_logits for s in own]),
            torch.tensor([s.uncertainty for s in own]),
            torch.stack([s.batch_stats for s in own]),
        )

    def _take(
        self,
        batch: UploadBatch,
        teacher_logits: torch.Tensor | None,
        start: Prompt | None,
        pooled: PooledUploads | None,
        fit: bool,
    ) -> PendingFit:
        if pooled is not None and pooled.batch_stats.shape[1:] != self.vplu.running_stats.shape:
            raise DataError("pooled uploads do not fit this device model's statistics")
        if len(batch.pixels) and (
            teacher_logits is None or len(teacher_logits) != len(batch.pixels)
        ):
            raise DataError("the teacher's logits do not match the uploads")
        changed = False
        if batch.shift and self.config.restart_on_shift:
            self.bank.new_environment()
            if start is not None:
                self.bank.accept(start)
            self.buffer.clear()
            if pooled is not None:
                self._seed(pooled)
            self.shifts += 1
            changed = True  # the device should drop the old environment's prompt now
        if len(batch.pixels):
            assert teacher_logits is not None
            self._store(batch, teacher_logits)
        request = None
        if fit and len(self.buffer) >= self.config.min_uploads and len(batch.pixels):
            request = self._request()
        return PendingFit(changed, request)

    @torch.no_grad()
    def _store(self, batch: UploadBatch, teacher_logits: torch.Tensor) -> None:
        x = self.normalize(batch.pixels)
        teacher_logits = teacher_logits.float()
        stats = batch.batch_stats.detach().float()
        frames = pixels_to_uint8(batch.pixels)
        for i in range(len(x)):
            self.buffer.append(
                _Sample(x[i], teacher_logits[i], float(batch.uncertainty[i]), stats, frames[i])
            )
        self.uploads += len(x)

    @torch.no_grad()
    def _seed(self, pooled: PooledUploads) -> None:
        """Pooled uploads into the fresh buffer, oldest first; they do not count as uploads."""
        pixels = unit_pixels(pooled.pixels)
        x = self.normalize(pixels)
        for i in range(len(pooled)):
            self.buffer.append(
                _Sample(
                    x[i],
                    pooled.teacher_logits[i].float(),
                    float(pooled.uncertainty[i]),
                    pooled.batch_stats[i].float(),
                    pooled.pixels[i],
                    pooled=True,
                )
            )

    def _request(self) -> FitRequest:
        """The fit of the current environment's prompt on the whole buffer."""
        samples = list(self.buffer)
        uploads = Uploads(
            x=torch.stack([s.x for s in samples]),
            batch_stats=torch.stack([s.batch_stats for s in samples]).mean(dim=0),
            uncertainty=torch.tensor([s.uncertainty for s in samples]),
            teacher_logits=torch.stack([s.teacher_logits for s in samples]),
        )
        return FitRequest(uploads, self.bank.current(), self._synthetic_view(samples))

    def _accept(self, result: UpdateResult) -> bool:
        """Bank a fit's prompt if it ships and passes the guard; True when the device should switch."""
        self.updates += 1
        problem = prompt_problem(result.prompt, self.vplu.neutral) if result.shipped else None
        if problem is not None:
            self.rejected_fits += 1
            log.warning("a fit was rejected (%s); the device keeps its last prompt", problem)
            return False
        if result.shipped:
            self.bank.accept(result.prompt)
            self.shipped += 1
        return result.shipped

    @torch.no_grad()
    def _synthetic_view(self, samples: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Clean labelled images rendered like this environment's buffer (None: no renderer)."""
        if self.synthetic is None:
            return None
        rendered = self.synthetic.render(torch.stack([s.frame for s in samples]))
        self.synthetic_samples += len(rendered.targets)
        return self.normalize(rendered.pixels), rendered.targets


def _check(batch: UploadBatch, running_stats: torch.Tensor) -> None:
    """Reject malformed uploads before they touch the buffer (a bad batch must cost nothing)."""
    n = len(batch.pixels)
    if batch.pixels.ndim != 4 or batch.pixels.shape[1] != 3:
        raise DataError(f"uploads must be (n, 3, H, W) pixels, got {tuple(batch.pixels.shape)}")
    if batch.uncertainty.shape != (n,):
        raise DataError(f"expected {n} uncertainty scores, got {tuple(batch.uncertainty.shape)}")
    if not torch.isfinite(batch.pixels).all():
        raise DataError("uploaded pixels contain NaN or Inf")
    if not bool(((batch.uncertainty >= 0) & (batch.uncertainty <= 1)).all()):
        raise DataError("uncertainty scores must be in [0, 1]")
    problem = stats_problem(batch.batch_stats, running_stats)
    if problem is not None:
        raise DataError(problem)
