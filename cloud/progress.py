"""Rich progress bars for long commands (training, corruption, benchmarks, simulations).

Rich draws a live bar only on a terminal; into a log file or CI it prints nothing until the
end, so a 90-minute benchmark looked hung. There, ``PlainProgress`` prints a line per
twentieth of each task instead, on stderr (stdout keeps the tables a command prints).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
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
    return (
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )


@contextmanager
def counted_progress(
    label: str, total: int, width: int = 28
) -> Iterator[Callable[[str, int], None]]:
    """One bar over ``total`` items; yields ``advance(description, items_done)``."""
    with progress_display(*bar_columns(width)) as bar:
        task = bar.add_task(label, total=total)

        def advance(description: str, items: int) -> None:
            bar.update(task, advance=items, description=description)

        yield advance


@contextmanager
def epoch_progress(
    epochs: int, steps_per_epoch: int
) -> Iterator[Callable[[int, int, float], None]]:
    """A bar over ``epochs * steps_per_epoch`` steps; yields ``advance(epoch, step, loss)``."""
    with progress_display(*bar_columns(0)) as bar:
        task = bar.add_task("training", total=epochs * steps_per_epoch)

        def advance(epoch: int, step: int, loss: float) -> None:
            bar.update(
                task,
                completed=epoch * steps_per_epoch + step + 1,
                description=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}",
            )

        yield advance


def progress_display(*columns: ProgressColumn) -> Any:
    """A live Rich ``Progress`` on a terminal, else a ``PlainProgress`` with its used API."""
    return Progress(*columns) if Console().is_terminal else PlainProgress()


@dataclass
class _PlainTask:
    description: str
    total: float
    done: float = 0.0
    shown: int = -1  # the last twentieth printed
    started: float = field(default_factory=time.monotonic)


class PlainProgress:
    """``add_task`` and ``update`` as Rich's, printing a line per twentieth of each task."""

    STEPS = 20

    def __init__(self) -> None:
        self.tasks: list[_PlainTask] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float) -> int:
        """A new task; returns its id."""
        self.tasks.append(_PlainTask(description, total))
        return len(self.tasks) - 1

    def update(
        self,
        task: int,
        *,
        advance: float = 0,
        completed: float | None = None,
        description: str | None = None,
    ) -> None:
        """Move ``task`` on; print when it crossed into a new twentieth (or finished)."""
        state = self.tasks[task]
        state.done = completed if completed is not None else state.done + advance
        state.description = description or state.description
        step = int(self.STEPS * state.done / state.total) if state.total else self.STEPS
        if step > state.shown:
            state.shown = step
            print(
                f"{state.description}: {state.done:.0f}/{state.total:.0f} "
                f"({100 * state.done / max(state.total, 1):.0f} %), "
                f"{time.monotonic() - state.started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
