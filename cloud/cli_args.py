"""Command-line options every cloud training command shares, defined once."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_training_arguments(
    parser: argparse.ArgumentParser, *, epochs: int, lr: float, out: Path, batch_size: int = 128
) -> None:
    """--epochs, --batch-size, --lr, --seed, --data-dir, --out and --limit with these defaults."""
    parser.add_argument("--epochs", type=int, default=epochs, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="default: %(default)s")
    parser.add_argument(
        "--lr", type=float, default=lr, help="peak learning rate (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--data-dir", help="where to look for Fashion-MNIST first (or $CDCA_DATA)")
    parser.add_argument("--out", type=Path, default=out, help="checkpoint (default: %(default)s)")
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images"
    )
