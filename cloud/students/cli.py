"""``cdca train student``: train a device student on the clean Fashion-MNIST training split."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_STUDENT = (
    Path(__file__).resolve().parent.parent / "checkpoints" / "student_compact_cnn.safetensors"
)


def main(argv: Sequence[str], prog: str = "cdca train") -> int:
    """Parse ``argv`` and run one training sub-command; returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="Train models on clean source data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    student = sub.add_parser(
        "student", help="train a device student (compact CNN or MobileNetV3-small)",
        description="Supervised training on the clean Fashion-MNIST training split (padded to "
        "32 px, RGB) with mild translation/flip augmentation only. Resumes an interrupted run "
        "from <out>.state.pt.",
    )  # fmt: skip
    student.add_argument("--arch", default="compact_cnn", help="compact_cnn | mobilenet_v3_small")
    student.add_argument("--epochs", type=int, default=8)
    student.add_argument("--batch-size", type=int, default=128)
    student.add_argument("--lr", type=float, default=2e-3)
    student.add_argument("--seed", type=int, default=0)
    student.add_argument("--data-dir", help="where to look for Fashion-MNIST first (or $CDCA_DATA)")
    student.add_argument(
        "--out", type=Path, default=DEFAULT_STUDENT, help=f"checkpoint (default: {DEFAULT_STUDENT})"
    )
    student.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images (smoke tests)"
    )
    args = parser.parse_args(argv)
    return _train_student(args)


def _train_student(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.students import create_student
    from cloud.students.checkpoint import StudentInfo, save_student
    from cloud.students.preprocess import Normalization
    from cloud.students.training import TrainConfig, evaluate, train_supervised

    train = load_fashion_mnist("train", args.data_dir).take(args.limit)
    test = load_fashion_mnist("test", args.data_dir)
    norm = Normalization.fit(train.images)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model = create_student(args.arch, len(train.class_names))
    steps = -(-len(train) // config.batch_size)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("training", total=config.epochs * steps)

        def advance(epoch: int, step: int, loss: float) -> None:
            bar.update(
                task, completed=epoch * steps + step + 1,
                description=f"epoch {epoch + 1}/{config.epochs} loss {loss:.3f}",
            )  # fmt: skip

        state = args.out.with_name(args.out.name + ".state.pt")
        train_supervised(model, train, norm, config, state, advance)
    accuracy = evaluate(model, test, norm)
    command = (
        "cdca train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 2
        else "cdca train student"
    )
    info = StudentInfo(
        arch=args.arch, class_names=tuple(train.class_names), normalization=norm,
        trained={"command": command, "seed": args.seed, "epochs": args.epochs,
                 "train_images": len(train), "clean_test_accuracy": round(accuracy, 4)},
    )  # fmt: skip
    save_student(args.out, model, info)
    state.unlink(missing_ok=True)
    print(f"{args.out}: {args.arch}, clean test accuracy {accuracy:.2%}")
    return 0
