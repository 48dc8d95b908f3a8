"""Rich progress bars for the cloud's long commands (training, corruption, evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def epoch_progress(
    epochs: int, steps_per_epoch: int
) -> Iterator[Callable[[int, int, float], None]]:
    """A bar over ``epochs * steps_per_epoch`` steps; yields ``advance(epoch, step, loss)``."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("training", total=epochs * steps_per_epoch)

        def advance(epoch: int, step: int, loss: float) -> None:
            bar.update(
                task,
                completed=epoch * steps_per_epoch + step + 1,
                description=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}",
            )

        yield advance
