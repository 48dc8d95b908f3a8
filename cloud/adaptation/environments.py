"""The environment bank: prompts of environments any device has left, found again by signature.

When a device reports a shift, the cloud compares the new environment's signature (what the
device model's first normalisation layer saw, ``protocol.signature``) with environments
other devices (or this one) have already been through. Close enough, and the device starts
from that environment's learned prompt instead of from the shared one; the cloud then keeps
refining it as uploads arrive. This extends VDP's domain-specific prompts (Gan et al., AAAI
2023, https://arxiv.org/abs/2212.04145) across devices, in the spirit of U-VPA's cloud
that serves many devices (Gan et al., CVPR 2023, https://arxiv.org/abs/2212.00972).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud.adaptation.prompt_bank import Prompt
from protocol.errors import ConfigError
from protocol.signature import signature_distance


@dataclass(frozen=True)
class EnvironmentBankConfig:
    """When two signatures count as one environment, and how much must be learned to keep one.

    ``match_distance`` is in the shift detector's unit (RMS over mean and log-std entries);
    on Fashion-MNIST-C the same corruption on two devices lies within about 0.02 and the
    closest pair of different corruptions (Gaussian vs shot noise) about 0.03, others 0.1+.
    """

    match_distance: float = 0.05
    min_evidence: int = 24  # uploads an environment needs before its prompt is worth keeping
    max_entries: int = 256

    def __post_init__(self) -> None:
        if self.match_distance <= 0 or self.min_evidence < 1 or self.max_entries < 1:
            raise ConfigError("need match_distance > 0, min_evidence >= 1 and max_entries >= 1")


@dataclass
class Environment:
    """One remembered environment: its mean signature, its prompt (absolute) and the evidence."""

    signature: np.ndarray
    prompt: Prompt
    evidence: int
    visits: int = 1


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

    def record(self, signature: np.ndarray, prompt: Prompt, evidence: int) -> None:
        """Remember an environment a device is leaving; refresh its entry if it is known.

        A known environment keeps the prompt learned from more uploads (a longer stay
        taught the cloud more), and its signature becomes the evidence-weighted mean.
        """
        if evidence < self.config.min_evidence:
            return
        prompt = {k: v.detach().clone() for k, v in prompt.items()}
        self.changes += 1
        known = self._nearest(signature)
        if known is None:
            self.entries.append(Environment(np.asarray(signature, np.float64), prompt, evidence))
            if len(self.entries) > self.config.max_entries:
                self.entries.remove(min(self.entries, key=lambda e: (e.visits, e.evidence)))
            return
        total = known.evidence + evidence
        known.signature = (known.signature * known.evidence + signature * evidence) / total
        if evidence >= known.evidence:
            known.prompt = prompt
        known.evidence, known.visits = total, known.visits + 1

    def _nearest(self, signature: np.ndarray) -> Environment | None:
        scored = [(signature_distance(e.signature, signature), e) for e in self.entries]
        scored = [(d, e) for d, e in scored if d <= self.config.match_distance]
        return min(scored, key=lambda pair: pair[0])[1] if scored else None


def mean_prompt(prompts: list[tuple[Prompt, float]]) -> Prompt | None:
    """Evidence-weighted mean of prompts (None when there is no evidence)."""
    total = sum(weight for _, weight in prompts)
    if total <= 0:
        return None
    keys = prompts[0][0].keys()
    return {k: sum(weight * p[k] for p, weight in prompts) / total for k in keys}  # type: ignore[misc]
