"""Command-line options every cloud training command shares, defined once."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    epochs: int,
    min_steps: int,
    lr: float,
    out_key: str,
    batch_size: int = 128,
) -> None:
    """--epochs, --batch-size, --lr, --seed, --out, --limit and --replace-shipped.

    ``epochs`` and ``min_steps`` define the default length: ``epochs`` passes, or more when
    the data is small, so that training takes at least ``min_steps`` optimiser steps.
    """
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"passes over the training images (default: {epochs}, or as many as make "
        f"{min_steps} steps when the data is small)",
    )
    parser.set_defaults(default_epochs=epochs, min_steps=min_steps)
    parser.add_argument("--batch-size", type=int, default=batch_size, help="default: %(default)s")
    parser.add_argument(
        "--lr", type=float, default=lr, help="peak learning rate (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"checkpoint to write (default: the project's {out_key})",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images"
    )
    parser.add_argument(
        "--replace-shipped",
        action="store_true",
        help="allow --out to overwrite a checkpoint shipped with cdca",
    )


def training_epochs(args: argparse.Namespace, images: int) -> int:
    """``--epochs``, else the default, raised so that small data still gets ``min_steps`` steps."""
    if args.epochs is not None:
        return int(args.epochs)
    steps_per_epoch = max(1, math.ceil(images / args.batch_size))
    return max(int(args.default_epochs), math.ceil(args.min_steps / steps_per_epoch))
