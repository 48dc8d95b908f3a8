"""The environment bank: prompts of environments any device has left, found again by signature.

When a device reports a shift, the cloud compares the new environment's signature (what the
device model's first normalisation layer saw, ``protocol.signature``) with environments
other devices (or this one) have already been through. Close enough, and the device starts
from that environment's learned prompt instead of from the shared one; the cloud then keeps
refining it as uploads arrive. This extends VDP's domain-specific prompts (Gan et al., AAAI
2023, https://arxiv.org/abs/2212.04145) across devices, in the spirit of U-VPA's cloud
that serves many devices (Gan et al., CVPR 2023, https://arxiv.org/abs/2212.00972).

An environment also keeps the most recent uploads made in it (``PooledUploads``): one device
sends only about a tenth of its frames, and a prompt fitted on 100 frames is limited by
that evidence (docs/uvpa.md), so the next device in the same environment fits on its own
uploads plus these. The frames stay in the cloud; devices only ever receive prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from cloud.adaptation.prompt_bank import Prompt
from protocol.config.adaptation import EnvironmentBankConfig
from protocol.signature import signature_distance


@dataclass(frozen=True)
class PooledUploads:
    """Uploads made in one environment, with what the cloud computed for them once.

    Attributes:
        pixels: (n, 3, H, W) uint8 frames, as the devices sent them.
        teacher_logits: (n, C) the teacher's logits for them.
        uncertainty: (n,) the uploading device's scores.
        batch_stats: (n, 2, K) the statistics of the batch each frame came from.
    """

    pixels: torch.Tensor
    teacher_logits: torch.Tensor
    uncertainty: torch.Tensor
    batch_stats: torch.Tensor

    def __len__(self) -> int:
        return len(self.pixels)

    @staticmethod
    def names() -> tuple[str, ...]:
        """The fields' names, in declaration order (how they are saved)."""
        return tuple(f.name for f in fields(PooledUploads))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The fields, in declaration order (for saving and joining)."""
        return tuple(getattr(self, name) for name in self.names())


def join_pools(
    older: PooledUploads | None, newer: PooledUploads | None, keep: int
) -> PooledUploads | None:
    """``older`` followed by ``newer``, the ``keep`` most recent kept (None when none are)."""
    parts = [pool.tensors() for pool in (older, newer) if pool is not None and len(pool)]
    if keep <= 0 or not parts:
        return None
    return PooledUploads(
        *(torch.cat(column)[-keep:].clone() for column in zip(*parts, strict=True))
    )


@dataclass
class Environment:
    """One remembered environment: its mean signature, its prompt (absolute) and the evidence.

    ``prompt`` is None while only short stays (under ``min_evidence`` uploads each) have
    been here: their prompts are not worth keeping, but their uploads pool all the same.
    ``contributors`` keeps each device's evidence and signature sum, so an operator can
    take back everything one device put here (``EnvironmentBank.forget``).
    """

    signature: np.ndarray
    prompt: Prompt | None
    evidence: int
    visits: int = 1
    uploads: PooledUploads | None = None
    prompt_from: str = ""
    contributors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)

    def add_contribution(self, device_id: str, evidence: int, signature: np.ndarray) -> None:
        """Count ``evidence`` uploads of ``device_id`` with this signature."""
        count, total = self.contributors.get(device_id, (0, np.zeros_like(self.signature)))
        self.contributors[device_id] = (count + evidence, total + evidence * signature)


class EnvironmentBank:
    """Environments seen by any device of a fleet."""

    def __init__(self, config: EnvironmentBankConfig | None = None) -> None:
        self.config = config or EnvironmentBankConfig()
        self.entries: list[Environment] = []
        self.lookups = self.hits = 0
        self.changes = 0  # bumped whenever an entry is added or refreshed (the server saves then)

    def match(self, signature: np.ndarray) -> Environment | None:
        """The closest remembered environment within ``match_distance``, or None."""
        self.lookups += 1
        best = self._nearest(signature)
        if best is None:
            return None
        self.hits += 1
        return best

    def record(
        self,
        signature: np.ndarray,
        prompt: Prompt | None,
        evidence: int,
        uploads: PooledUploads | None = None,
        device_id: str = "",
    ) -> None:
        """Remember an environment a device is leaving; refresh its entry if it is known.

        A known environment keeps the prompt learned from more uploads (a longer stay
        taught the cloud more), its signature becomes the evidence-weighted mean, and the
        stay's uploads join its pool (the most recent ``pooled_uploads`` kept). A stay too
        short for its prompt to count still leaves its uploads: many devices passing
        through briefly add up to the evidence none of them has alone. ``prompt`` None: the
        stay's prompt failed the guard (``cloud.adaptation.guard``); only its uploads count.
        """
        keep = self.config.pooled_uploads
        signature = np.asarray(signature, np.float64)
        worth_keeping: Prompt | None = None
        if prompt is not None and evidence >= self.config.min_evidence:
            worth_keeping = {k: v.detach().clone() for k, v in prompt.items()}
        elif uploads is None or len(uploads) == 0 or keep == 0 or evidence < 1:
            return
        self.changes += 1
        known = self._nearest(signature)
        if known is None:
            known = Environment(
                signature,
                worth_keeping,
                evidence,
                uploads=join_pools(None, uploads, keep),
                prompt_from=device_id if worth_keeping is not None else "",
            )
            known.add_contribution(device_id, evidence, signature)
            self.entries.append(known)
            if len(self.entries) > self.config.max_entries:  # the least visited, least evident
                self.entries.remove(min(self.entries, key=lambda e: (e.visits, e.evidence)))
            return
        total = known.evidence + evidence
        known.signature = (known.signature * known.evidence + signature * evidence) / total
        if worth_keeping is not None and (known.prompt is None or evidence >= known.evidence):
            known.prompt, known.prompt_from = worth_keeping, device_id
        known.evidence, known.visits = total, known.visits + 1
        known.uploads = join_pools(known.uploads, uploads, keep)
        known.add_contribution(device_id, evidence, signature)

    def forget(self, device_id: str) -> int:
        """Take back everything ``device_id`` contributed; returns the entries it touched.

        An entry only it visited goes; in a shared one its evidence and signature come out,
        the prompt goes if it was the device's, and the pooled uploads go (they are not
        traced to devices one by one: dropping the pool is the safe side).
        """
        touched = [e for e in self.entries if device_id in e.contributors]
        for entry in touched:
            evidence, signature_sum = entry.contributors.pop(device_id)
            if not entry.contributors:
                self.entries.remove(entry)
                continue
            entry.evidence = max(1, entry.evidence - evidence)
            sums = [total for _, total in entry.contributors.values()]
            counts = sum(count for count, _ in entry.contributors.values())
            entry.signature = np.sum(sums, axis=0) / max(1, counts)
            if entry.prompt_from == device_id:
                entry.prompt, entry.prompt_from = None, ""
            entry.uploads = None
        if touched:
            self.changes += 1
        return len(touched)

    def _nearest(self, signature: np.ndarray) -> Environment | None:
        scored = [(signature_distance(e.signature, signature), e) for e in self.entries]
        scored = [(d, e) for d, e in scored if d <= self.config.match_distance]
        return min(scored, key=lambda pair: pair[0])[1] if scored else None
