"""``cdca train companion``: train the cloud's re-normalisable companion teacher."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cloud.cli_args import add_training_arguments
from cloud.teacher.cli import severity5_accuracy
from cloud.teacher.companion import COMPANION_CHECKPOINT, MIN_BATCH, CompanionConfig
from cloud.teacher.front_end import FRONT_ENDS

if TYPE_CHECKING:
    from cloud.data.labelled import LabelledImages
    from cloud.teacher.companion import Companion

EVAL_BATCH = 64  # the companion normalises with each batch, as in the cloud's buffer


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``companion`` under ``cdca train``."""
    parser = sub.add_parser(
        "companion",
        help="train the cloud's BatchNorm companion teacher (used by `uvpa_companion`)",
        description="A wide compact CNN behind a fixed local-contrast-normalisation front end, "
        "trained on clean Fashion-MNIST with the teacher's "
        "augmentations (AugMix ops and the 4 extra corruptions, never the 15 test corruptions). "
        "In the cloud it normalises with each device's current-environment uploads and joins "
        "the ensemble target. About 12 minutes on 2 cores; resumes from <out>.state.pt.",
    )
    defaults = CompanionConfig()
    add_training_arguments(parser, epochs=defaults.epochs, lr=defaults.lr, out=COMPANION_CHECKPOINT)
    parser.add_argument("--width", type=int, default=defaults.width, help="default: %(default)s")
    parser.add_argument(
        "--front-end",
        choices=FRONT_ENDS,
        default=defaults.front_end,
        help="fixed input front end: lcn = local contrast normalisation, which removes smooth "
        "fields (haze, fog) and contrast changes; none = raw pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-data", default="data/fashion-mnist-c", help="benchmark for the severity-5 check"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, measure clean and severity-5 accuracy with batch statistics, save with metadata."""
    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.progress import epoch_progress
    from cloud.teacher.companion import save_companion, train_companion

    train = load_fashion_mnist("train", args.data_dir).take(args.limit)
    test = load_fashion_mnist("test", args.data_dir)
    config = CompanionConfig(width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, front_end=args.front_end)  # fmt: skip
    state = args.out.with_name(args.out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        companion = train_companion(train, config, state, advance)
    meta: dict[str, object] = {"command": args.command_line, "seed": args.seed,
                               "epochs": args.epochs, "train_images": len(train),
                               "clean_test_accuracy": round(batch_accuracy(companion, test), 4)}  # fmt: skip
    meta.update(
        severity5_accuracy(lambda data: batch_accuracy(companion, data), args.eval_data, 1000)
    )
    save_companion(args.out, companion, meta)
    state.unlink(missing_ok=True)
    shown = ("clean_test_accuracy", "severity5_mean_accuracy")
    print(f"{args.out}: " + ", ".join(f"{k}={meta[k]}" for k in shown if k in meta))
    return 0


def batch_accuracy(companion: Companion, data: LabelledImages) -> float:
    """Top-1 accuracy, each batch of 64 normalised with its own statistics."""
    import torch

    from cloud.students.preprocess import pixels_from_uint8

    correct = 0
    for first in range(0, len(data), EVAL_BATCH):
        images = data.images[first : first + EVAL_BATCH]
        if len(images) < MIN_BATCH:  # a ragged last batch too small for statistics
            break
        probs = companion.probabilities(pixels_from_uint8(images))
        labels = torch.tensor(data.labels[first : first + EVAL_BATCH])  # copies: may be read-only
        correct += int((probs.argmax(1) == labels).sum())
    return correct / max(1, len(data))
