"""Rich progress bars for long commands (training, corruption, benchmarks, simulations)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)


def bar_columns(width: int = 28) -> tuple[ProgressColumn, ...]:
    """Description padded to ``width`` (0: not padded), bar, done/total and time left."""
    return (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn())  # fmt: skip


@contextmanager
def counted_progress(
    label: str, total: int, width: int = 28
) -> Iterator[Callable[[str, int], None]]:
    """One bar over ``total`` items; yields ``advance(description, items_done)``."""
    with Progress(*bar_columns(width)) as bar:
        task = bar.add_task(label, total=total)

        def advance(description: str, items: int) -> None:
            bar.update(task, advance=items, description=description)

        yield advance


@contextmanager
def epoch_progress(
    epochs: int, steps_per_epoch: int
) -> Iterator[Callable[[int, int, float], None]]:
    """A bar over ``epochs * steps_per_epoch`` steps; yields ``advance(epoch, step, loss)``."""
    with Progress(*bar_columns(0)) as bar:
        task = bar.add_task("training", total=epochs * steps_per_epoch)

        def advance(epoch: int, step: int, loss: float) -> None:
            bar.update(
                task,
                completed=epoch * steps_per_epoch + step + 1,
                description=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}",
            )

        yield advance
