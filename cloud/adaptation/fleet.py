"""U-VPA for a fleet: one cloud session per device, plus what devices teach each other.

Gan et al., U-VPA, CVPR 2023 (https://arxiv.org/abs/2212.00972) adapts one device; a cloud
serving many devices can also pass knowledge between them:

- the shared (domain-agnostic, VDP) prompt is aggregated over devices, weighted by the
  environments each has learned (capped, and robust to one device's outlier:
  ``cloud.adaptation.aggregate``), and a device entering an unknown environment starts
  from it;
- the environment bank (``cloud.adaptation.environments``) remembers every environment a
  device leaves; a device entering one that any device has seen starts from its prompt,
  and (``pool_uploads``) fits on the uploads made there before as well as its own.

No transport code: the in-process simulation, the gRPC server and the Flower ServerApp
all hand uploads to ``FleetCloud.ingest_many`` (one batch per device; one teacher pass and
one fit for all of them) and ship what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cloud.adaptation.aggregate import robust_mean_prompt
from cloud.adaptation.environments import EnvironmentBank, PooledUploads
from cloud.adaptation.guard import prompt_problem
from cloud.adaptation.prompt_bank import Prompt, PromptBank
from cloud.adaptation.session import AdaptationSession, PendingFit, UploadBatch
from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.adaptation.vplu import VPLU, UpdateResult
from protocol.config.adaptation import AdaptationConfig
from protocol.errors import CdcaError
from protocol.signature import batch_signature


@dataclass(frozen=True)
class DeviceBatch:
    """One device's batch for ``FleetCloud.ingest_many`` (``fit``: see ``AdaptationSession.ingest``)."""

    device_id: str
    upload: UploadBatch
    fit: bool = True


@dataclass
class _Stay:
    """The current environment of one device: its signature so far and uploads at its start."""

    signature_sum: np.ndarray | None = None
    batches: int = 0
    uploads_at_start: int = 0

    def add(self, signature: np.ndarray) -> None:
        self.signature_sum = (
            signature if self.signature_sum is None else self.signature_sum + signature
        )
        self.batches += 1

    def signature(self) -> np.ndarray | None:
        return None if self.signature_sum is None else self.signature_sum / self.batches


class FleetCloud:
    """Cloud-side U-VPA for many devices.

    Args:
        vplu: the learner (stateless across devices; shared).
        teacher: [0, 1] pixels -> teacher logits over the devices' classes.
        normalize: [0, 1] pixels -> the device model's input.
        config: the project's ``[adaptation]`` (sessions, prompt banks, what devices share).
        synthetic: renders the cloud's clean labelled images like each device's uploads
            (``cloud.adaptation.synthetic``), shared by every session; None: uploads only.
    """

    def __init__(
        self,
        vplu: VPLU,
        teacher: Callable[[torch.Tensor], torch.Tensor],
        normalize: Callable[[torch.Tensor], torch.Tensor],
        config: AdaptationConfig | None = None,
        synthetic: EnvironmentRenderer | None = None,
    ) -> None:
        self.vplu, self.teacher, self.normalize = vplu, teacher, normalize
        self.synthetic = synthetic
        self.adaptation = config or AdaptationConfig()
        self.sharing = self.adaptation.sharing
        self.channels = vplu.model.norm_layers[0].channels if vplu.model.norm_layers else 0
        self.environments = EnvironmentBank(self.adaptation.environment_bank)
        self.sessions: dict[str, AdaptationSession] = {}
        # banks of devices another process adapts (``cloud.server.ray_workers``): they count
        # in the shared prompt as if their sessions were here
        self.peers: dict[str, PromptBank] = {}
        self.stays: dict[str, _Stay] = {}
        self.starts = {"bank": 0, "fleet_shared": 0, "own_shared": 0}
        self.fits = 0  # passes of VPLU.update_many (each fits one or more devices)
        self.device_fits = 0  # devices fitted, over all passes
        self.teacher_seconds = 0.0

    def session(self, device_id: str, bank: PromptBank | None = None) -> AdaptationSession:
        """The device's session, created on first use (from ``bank`` when one was restored)."""
        if device_id not in self.sessions:
            bank = bank or PromptBank(self.vplu.neutral, self.adaptation.prompt_bank)
            self.sessions[device_id] = AdaptationSession(
                self.vplu,
                self.teacher,
                self.normalize,
                bank,
                self.adaptation.session,
                self.synthetic,
            )
            self.stays[device_id] = _Stay()
        return self.sessions[device_id]

    def ingest(self, device_id: str, upload: UploadBatch, fit: bool = True) -> Prompt | None:
        """One device batch's uploads; returns the prompt that device should switch to, if any.

        ``fit``: False only buffers them (``AdaptationSession.ingest``). Raises ``DataError``
        for a batch the device's model cannot take.
        """
        outcome = self.ingest_many([DeviceBatch(device_id, upload, fit)])[0]
        if isinstance(outcome, CdcaError):
            raise outcome
        return outcome

    def ingest_many(self, batches: list[DeviceBatch]) -> list[Prompt | None | CdcaError]:
        """One batch each from many devices: one teacher pass, then one fit for them all.

        Per batch, in order: the prompt its device should switch to (None: none), or the
        ``CdcaError`` that refused it; a refused batch changes nothing and costs the others
        nothing. Each device's result is what ``ingest`` alone would give (up to float noise),
        except that devices entering an environment in the same call do not yet see each
        other's prompts for it.
        """
        ids = [b.device_id for b in batches]
        if len(set(ids)) != len(ids):
            raise ValueError("ingest_many takes one batch per device")
        outcomes: list[Prompt | None | CdcaError] = [None] * len(batches)
        valid = []
        for i, item in enumerate(batches):
            try:
                self.session(item.device_id).check(item.upload)
                valid.append(i)
            except CdcaError as err:
                outcomes[i] = err
        logits = self._teacher_many([batches[i].upload.pixels for i in valid])
        pending: dict[int, PendingFit] = {}
        for i, teacher_logits in zip(valid, logits, strict=True):
            try:
                pending[i] = self._take(batches[i], teacher_logits)
            except CdcaError as err:
                outcomes[i] = err
        fitting = [i for i, p in pending.items() if p.request is not None]
        results = self._fit([pending[i] for i in fitting], [ids[i] for i in fitting])
        for i, p in pending.items():
            outcomes[i] = self.sessions[ids[i]].finish(p, results.get(ids[i]))
        return outcomes

    def _teacher_many(self, pixels: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The teacher's logits for every batch's pixels, in one pass (None: no pixels)."""
        sizes = [len(p) for p in pixels]
        if not sum(sizes):
            return [None] * len(pixels)
        began = time.perf_counter()
        with torch.no_grad():
            logits = self.teacher(torch.cat([p for p in pixels if len(p)])).float()
        self.teacher_seconds += time.perf_counter() - began
        parts = iter(logits.split([n for n in sizes if n]))
        return [next(parts) if n else None for n in sizes]

    def _take(self, item: DeviceBatch, teacher_logits: torch.Tensor | None) -> PendingFit:
        """A device's batch up to its fit: its stay, and on a shift where it starts from."""
        session = self.session(item.device_id)
        stay = self.stays[item.device_id]
        upload = item.upload
        signature = batch_signature(upload.batch_stats.detach().cpu().numpy(), self.channels)
        start = pooled = None
        if upload.shift and session.config.restart_on_shift:
            self._leave(item.device_id, session, stay)
            start, pooled, source = self._starting_point(item.device_id, signature)
            self.starts[source] += 1
            self.stays[item.device_id] = stay = _Stay(uploads_at_start=session.uploads)
        stay.add(signature)
        return session.take(upload, teacher_logits, start, pooled, item.fit)

    def _fit(self, pending: list[PendingFit], device_ids: list[str]) -> dict[str, UpdateResult]:
        """Every pending fit in one ``update_many``; each session is charged its share of the time."""
        if not pending:
            return {}
        began = time.perf_counter()
        results = self.vplu.update_many([p.request for p in pending if p.request is not None])
        seconds = time.perf_counter() - began
        sizes = [_samples(p) for p in pending]
        for device_id, size in zip(device_ids, sizes, strict=True):
            self.sessions[device_id].seconds += seconds * size / max(1, sum(sizes))
        self.fits += 1
        self.device_fits += len(pending)
        return dict(zip(device_ids, results, strict=True))

    def shared_prompt(self, leaving: str | None = None) -> Prompt:
        """Every device's domain-agnostic prompt, weighted by the environments it has learned.

        ``leaving``: a device whose current environment is ending; it counts with the prompt
        it ends with (what its own shared prompt is about to absorb).
        """
        neutral = self.vplu.neutral
        weighted = []
        for device_id, bank in self._banks().items():
            if device_id == leaving:
                weighted.append((bank.current(), float(bank.environments)))
            else:
                shared = {k: neutral[k] + bank.shared[k] for k in neutral}
                weighted.append((shared, float(bank.environments - 1)))
        return robust_mean_prompt(weighted, neutral, self.sharing.max_device_weight)

    def forget(self, device_id: str) -> int:
        """Drop a device's session and everything it put in the environment bank.

        The shared prompt is computed from the sessions, so it no longer counts the device
        either. Returns the environment entries it had touched.
        """
        self.sessions.pop(device_id, None)
        self.stays.pop(device_id, None)
        return self.environments.forget(device_id)

    def buffered_uploads(self, device_id: str) -> int:
        """Uploads in the device's buffer (0 for a device without a session)."""
        session = self.sessions.get(device_id)
        return len(session.buffer) if session else 0

    @property
    def rejected_fits(self) -> int:
        """Fits whose prompt failed the guard, over every session."""
        return sum(s.rejected_fits for s in self.sessions.values())

    def stats(self) -> dict[str, float]:
        """Counters for reports: environments, bank use, stay starts, updates, seconds."""
        return {
            "environments_remembered": len(self.environments.entries),
            "bank_lookups": self.environments.lookups,
            "bank_hits": self.environments.hits,
            **{f"started_from_{k}": v for k, v in self.starts.items()},
            "updates": sum(s.updates for s in self.sessions.values()),
            "synthetic_samples": sum(s.synthetic_samples for s in self.sessions.values()),
            "fits": self.fits,
            "cloud_seconds": self.teacher_seconds + sum(s.seconds for s in self.sessions.values()),
        }

    def _banks(self) -> dict[str, PromptBank]:
        """Every device's prompt bank: this cloud's sessions, then its peers'."""
        return {**self.peers, **{d: s.bank for d, s in self.sessions.items()}}

    def _leave(self, device_id: str, session: AdaptationSession, stay: _Stay) -> None:
        signature = stay.signature()
        if self.sharing.environment_bank and signature is not None:
            evidence = session.uploads - stay.uploads_at_start
            uploads = session.stay_uploads() if self.sharing.pool_uploads else None
            current = session.bank.current()
            # a prompt that fails the guard is never banked; the stay's uploads may still pool
            prompt = current if prompt_problem(current, self.vplu.neutral) is None else None
            self.environments.record(signature, prompt, evidence, uploads, device_id)

    def _starting_point(
        self, device_id: str, signature: np.ndarray
    ) -> tuple[Prompt | None, PooledUploads | None, str]:
        """Where a device's new environment starts: prompt, pooled uploads, and which source."""
        pooled = None
        if self.sharing.environment_bank:
            known = self.environments.match(signature)
            if known is not None:
                pooled = known.uploads if self.sharing.pool_uploads else None
                if known.prompt is not None:
                    return known.prompt, pooled, "bank"
        others = [bank for d, bank in self._banks().items() if d != device_id]
        if self.sharing.share_across_devices and any(bank.environments > 1 for bank in others):
            return self.shared_prompt(leaving=device_id), pooled, "fleet_shared"
        return None, pooled, "own_shared"


def _samples(pending: PendingFit) -> int:
    """Samples a pending fit trains on (its share of a shared pass)."""
    request = pending.request
    if request is None:
        return 0
    return len(request.uploads.x) + (len(request.extra[0]) if request.extra is not None else 0)
