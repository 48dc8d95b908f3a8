"""Stop a training run that has diverged or sits at chance, with a message that says what to try.

A run from scratch on a new dataset can blow up (a NaN loss) or collapse to predicting the
same distribution for every image (cross-entropy stuck at ln C for C classes, the loss of a
uniform guess). Neither recovers by itself, and hours of CPU time would end in a useless
checkpoint. ``TrainingWatch`` sees every step's loss and raises ``TrainingFailed`` as soon
as it is clear; the caller writes nothing.
"""

from __future__ import annotations

import math

from protocol.errors import CdcaError

CHANCE_MARGIN = 0.02  # an epoch's mean loss within 2 % of ln C counts as chance
PATIENCE_EPOCHS = 2  # epochs at chance after the warm-up before giving up ...
PATIENCE_STEPS = 200  # ... and at least this many steps: a short run is not judged


class TrainingFailed(CdcaError):
    """The run diverged or stopped learning; nothing was written."""


class TrainingWatch:
    """Per-step losses in, a ``TrainingFailed`` out when the run is lost.

    Args:
        what: what is trained, for the message ("the teacher").
        num_classes: C; chance is a cross-entropy of ln C.
        warmup_steps: steps before the checks on chance start (the schedule's warm-up).
        hint: what to try instead, appended to the message.
    """

    def __init__(self, what: str, num_classes: int, warmup_steps: int, hint: str) -> None:
        self.what, self.chance = what, math.log(max(2, num_classes))
        self.warmup_steps, self.hint = warmup_steps, hint
        self.steps = 0
        self.epoch_losses: list[float] = []
        self.epochs_at_chance = 0
        self.chance_since: int | None = None  # the step the current run at chance began
        self._last_epoch: list[float] = []

    def step(self, loss: float) -> None:
        """One optimiser step's loss; a NaN or infinite loss fails at once."""
        self.steps += 1
        if not math.isfinite(loss):
            raise TrainingFailed(
                f"{self.what} diverged: the loss became {loss} at step {self.steps}. {self.hint}"
            )
        self.epoch_losses.append(loss)

    def end_epoch(self, epoch: int) -> None:
        """After each epoch: two epochs (and 200 steps) at chance after the warm-up fail the run."""
        mean = sum(self.epoch_losses) / max(1, len(self.epoch_losses))
        self._last_epoch, self.epoch_losses = self.epoch_losses, []
        at_chance = mean >= (1 - CHANCE_MARGIN) * self.chance
        past_warmup = self.steps > self.warmup_steps
        if at_chance and past_warmup:
            self.epochs_at_chance += 1
            if self.chance_since is None:
                self.chance_since = self.steps - len(self._last_epoch)
        else:
            self.epochs_at_chance, self.chance_since = 0, None
        steps_at_chance = 0 if self.chance_since is None else self.steps - self.chance_since
        if self.epochs_at_chance >= PATIENCE_EPOCHS and steps_at_chance >= PATIENCE_STEPS:
            raise TrainingFailed(
                f"{self.what} is not learning: after epoch {epoch + 1} its loss is {mean:.3f}, "
                f"the ln {math.exp(self.chance):.0f} = {self.chance:.3f} of a uniform guess. "
                f"{self.hint}"
            )
