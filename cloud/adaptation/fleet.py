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
all hand uploads to ``FleetCloud.ingest`` and ship what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cloud.adaptation.aggregate import robust_mean_prompt
from cloud.adaptation.environments import EnvironmentBank, PooledUploads
from cloud.adaptation.guard import prompt_problem
from cloud.adaptation.prompt_bank import Prompt, PromptBank
from cloud.adaptation.session import AdaptationSession, UploadBatch
from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.adaptation.vplu import VPLU
from protocol.config.adaptation import AdaptationConfig
from protocol.signature import batch_signature


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
        self.stays: dict[str, _Stay] = {}
        self.starts = {"bank": 0, "fleet_shared": 0, "own_shared": 0}

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

        ``fit``: False only buffers them (``AdaptationSession.ingest``).
        """
        session = self.session(device_id)
        stay = self.stays[device_id]
        signature = batch_signature(upload.batch_stats.detach().cpu().numpy(), self.channels)
        start = pooled = None
        if upload.shift and session.config.restart_on_shift:
            self._leave(device_id, session, stay)
            start, pooled, source = self._starting_point(device_id, signature)
            self.starts[source] += 1
            self.stays[device_id] = stay = _Stay(uploads_at_start=session.uploads)
        stay.add(signature)
        return session.ingest(upload, start, pooled, fit)

    def shared_prompt(self, leaving: str | None = None) -> Prompt:
        """Every device's domain-agnostic prompt, weighted by the environments it has learned.

        ``leaving``: a device whose current environment is ending; it counts with the prompt
        it ends with (what its own shared prompt is about to absorb).
        """
        neutral = self.vplu.neutral
        weighted = []
        for device_id, session in self.sessions.items():
            bank = session.bank
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

    def stats(self) -> dict[str, float]:
        """Counters for reports: environments, bank use, stay starts, updates, seconds."""
        return {
            "environments_remembered": len(self.environments.entries),
            "bank_lookups": self.environments.lookups,
            "bank_hits": self.environments.hits,
            **{f"started_from_{k}": v for k, v in self.starts.items()},
            "updates": sum(s.updates for s in self.sessions.values()),
            "synthetic_samples": sum(s.synthetic_samples for s in self.sessions.values()),
            "cloud_seconds": sum(s.seconds for s in self.sessions.values()),
        }

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
        others = [s for d, s in self.sessions.items() if d != device_id]
        if self.sharing.share_across_devices and any(s.bank.environments > 1 for s in others):
            return self.shared_prompt(leaving=device_id), pooled, "fleet_shared"
        return None, pooled, "own_shared"
