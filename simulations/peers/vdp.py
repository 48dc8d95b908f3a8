"""A device-side visual domain prompt method in the spirit of VDP.

Gan et al., "Decorate the Newcomers: Visual Domain Prompt for Continual Test Time
Adaptation", AAAI 2023 (https://arxiv.org/abs/2212.04145). No official code exists; this
follows the paper's description. The source model stays frozen (eval mode, source
statistics); a domain-specific prompt (DSP) and a domain-agnostic prompt (DAP) are
summed and added to the image. A teacher holds the EMA of the student's prompts and
predicts on the clean prompted input; the student learns, on an augmented view, to match
the teacher (soft cross-entropy). Homeostasis: each step, the DAP entries with the largest
gradient magnitude (the domain-sensitive ones) are held back, so the DAP keeps what is
shared. Choices of ours, not the paper's (unreadable): full-image additive prompts,
Adam lr 1e-2, EMA 0.99, top 10 % of DAP entries held back, no DSP reset (no domain labels).
"""

from __future__ import annotations

import torch

from simulations.peers.augment import cotta_augmentation
from simulations.peers.base import AdaptationMethod, PixelModel


class VDPStyle(AdaptationMethod):
    """Frozen model, learned additive input prompts (DSP + DAP), EMA teacher, homeostasis on DAP."""

    name = "vdp"
    uses_backprop = True  # backprop through the frozen model into the prompt

    def __init__(
        self,
        model: PixelModel,
        image_size: int = 32,
        lr: float = 1e-2,
        ema: float = 0.99,
        held_back: float = 0.1,
    ) -> None:
        super().__init__(model)
        self.model.eval().requires_grad_(False)
        shape = (1, 3, image_size, image_size)
        self.dsp = torch.zeros(shape, requires_grad=True)
        self.dap = torch.zeros(shape, requires_grad=True)
        self.teacher_prompt = torch.zeros(shape)
        self.ema, self.held_back = ema, held_back
        self.augment = cotta_augmentation(image_size=image_size)
        self.optimizer = torch.optim.Adam([self.dsp, self.dap], lr=lr)
        self.record(
            optimizer="Adam", lr=lr, ema=ema, held_back=held_back, parameters="input prompts"
        )

    def step(self, pixels: torch.Tensor) -> torch.Tensor:
        """Teacher predicts with the EMA prompt; student prompts learn on an augmented view."""
        with torch.no_grad():
            teacher_logits = self.model((pixels + self.teacher_prompt).clamp(0, 1))
        student_logits = self.model((self.augment(pixels) + self.dsp + self.dap).clamp(0, 1))
        loss = -(teacher_logits.softmax(1) * student_logits.log_softmax(1)).sum(1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.count(len(pixels), forwards=2 * len(pixels), backwards=len(pixels))
        self._homeostasis()
        self.optimizer.step()
        with torch.no_grad():
            student_prompt = self.dsp + self.dap
            self.teacher_prompt.mul_(self.ema).add_(student_prompt, alpha=1 - self.ema)
        return teacher_logits

    @torch.no_grad()
    def _homeostasis(self) -> None:
        grad = self.dap.grad
        if grad is None or self.held_back <= 0:
            return
        magnitude = grad.abs().flatten()
        k = max(1, int(self.held_back * magnitude.numel()))
        threshold = magnitude.topk(k).values.min()
        grad[grad.abs() >= threshold] = 0.0

    def reset(self) -> None:
        """Zero every prompt (the model itself never changes)."""
        for prompt in (self.dsp, self.dap, self.teacher_prompt):
            prompt.data.zero_()
