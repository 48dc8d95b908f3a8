"""``cdca train student``: train a device student on the clean Fashion-MNIST training split."""

from __future__ import annotations

import argparse
from pathlib import Path

from cloud.cli_args import add_training_arguments

DEFAULT_STUDENT = (
    Path(__file__).resolve().parent.parent / "checkpoints" / "student_compact_cnn.safetensors"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``student`` under ``cdca train``."""
    student = sub.add_parser(
        "student",
        help="train a device student (compact CNN or MobileNetV3-small)",
        description="Supervised training on the clean Fashion-MNIST training split (padded to "
        "32 px, RGB) with mild translation/flip augmentation only. Resumes an interrupted run "
        "from <out>.state.pt.",
    )
    student.add_argument("--arch", default="compact_cnn", help="compact_cnn | mobilenet_v3_small")
    add_training_arguments(student, epochs=8, lr=2e-3, out=DEFAULT_STUDENT)
    student.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on the clean test split and save the checkpoint with its metadata."""
    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.progress import epoch_progress
    from cloud.students import create_student
    from cloud.students.checkpoint import StudentInfo, save_student
    from cloud.students.preprocess import Normalization
    from cloud.students.training import TrainConfig, evaluate, train_supervised

    train = load_fashion_mnist("train", args.data_dir).take(args.limit)
    test = load_fashion_mnist("test", args.data_dir)
    norm = Normalization.fit(train.images)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model = create_student(args.arch, len(train.class_names))
    state = args.out.with_name(args.out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        train_supervised(model, train, norm, config, state, advance)
    accuracy = evaluate(model, test, norm)
    trained = {
        "command": args.command_line,
        "seed": args.seed,
        "epochs": args.epochs,
        "train_images": len(train),
        "clean_test_accuracy": round(accuracy, 4),
    }
    save_student(
        args.out, model, StudentInfo(args.arch, tuple(train.class_names), norm, trained=trained)
    )
    state.unlink(missing_ok=True)
    print(f"{args.out}: {args.arch}, clean test accuracy {accuracy:.2%}")
    return 0
