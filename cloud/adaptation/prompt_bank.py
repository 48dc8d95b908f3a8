"""Domain-specific and domain-agnostic prompts with homeostasis (VDP), as deltas from the student.

Gan et al., "Decorate the Newcomers: Visual Domain Prompt for Continual Test Time
Adaptation" (VDP), AAAI 2023 (https://arxiv.org/abs/2212.04145): a domain-specific prompt
(DSP) learns the current environment and a domain-agnostic prompt (DAP) keeps what
carries over; homeostasis holds back the DAP entries that are sensitive to the domain.

Here every prompt part is stored as a delta from the unadapted student, so the device
receives ``neutral + shared + specific``. When the device reports a shift, the specific
delta is folded into the shared one except for its domain-sensitive entries (the largest
changes, whose size says they encode this environment rather than what carries over), and
the specific delta restarts from zero.
"""

from __future__ import annotations

import torch

from protocol.config.adaptation import PromptBankConfig

Prompt = dict[str, torch.Tensor]


class PromptBank:
    """The prompts of one device: neutral, shared (DAP) and current-environment (DSP) deltas."""

    def __init__(self, neutral: Prompt, config: PromptBankConfig | None = None) -> None:
        self.config = config or PromptBankConfig()
        self.neutral = {k: v.detach().clone() for k, v in neutral.items()}
        self.shared = {k: torch.zeros_like(v) for k, v in neutral.items()}
        self.specific = {k: torch.zeros_like(v) for k, v in neutral.items()}
        self.environments = 1

    def current(self) -> Prompt:
        """What the device should run now: neutral + shared + specific."""
        return {k: self.neutral[k] + self.shared[k] + self.specific[k] for k in self.neutral}

    def accept(self, prompt: Prompt) -> None:
        """Store an absolute prompt the cloud learned for the current environment."""
        for k, value in prompt.items():
            self.specific[k] = value.detach() - self.neutral[k] - self.shared[k]

    def new_environment(self) -> Prompt:
        """Fold the ending environment into the shared prompt (homeostasis), restart the DSP."""
        rate = self.config.shared_rate
        for k, delta in self.specific.items():
            self.shared[k] = self.shared[k] + rate * delta * self._carries_over(delta)
            self.specific[k] = torch.zeros_like(delta)
        self.environments += 1
        return self.current()

    def _carries_over(self, delta: torch.Tensor) -> torch.Tensor:
        """1 for entries small enough to be shared, 0 for the domain-sensitive ones."""
        size = delta.abs().flatten()
        if size.numel() == 0 or self.config.sensitive_quantile >= 1:
            return torch.ones_like(delta)
        limit = torch.quantile(size.float(), self.config.sensitive_quantile)
        return (delta.abs() <= limit).to(delta.dtype)
