"""``cdca train student``: train a device student on the project's labelled training images."""

from __future__ import annotations

import argparse
import typing

from cloud.cli_args import add_training_arguments, training_epochs
from cloud.project_cli import add_project_arguments, project_from_args
from protocol.config.models import StudentArch

STUDENT_MIN_STEPS = 2000  # a small dataset still gets this many optimiser steps by default


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``student`` under ``cdca train``."""
    student = sub.add_parser(
        "student",
        help="train a device student on the labels (the on-device reference)",
        description="Supervised training on the project's training images (data.train, at "
        "data.image_size) with mild translation/flip augmentation only; clean accuracy on "
        "data.test. Writes student.label_trained (or --out). The devices run the distilled "
        "student (`cdca cloud distill`); this one is the label-trained reference its report "
        "compares with. Resumes an interrupted run from <out>.state.pt.",
        epilog="example: cdca train student --project cdca.toml --arch mobilenet_v3_small",
    )
    student.add_argument("--arch", choices=typing.get_args(StudentArch), help="student.arch")
    add_training_arguments(
        student, epochs=8, min_steps=STUDENT_MIN_STEPS, lr=2e-3, out_key="student.label_trained"
    )
    add_project_arguments(student)
    student.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on the clean test split and save the checkpoint with its metadata."""
    from cloud.data.splits import load_split
    from cloud.progress import epoch_progress
    from cloud.shipped import output_path
    from cloud.students import create_student
    from cloud.students.checkpoint import StudentInfo, save_student
    from cloud.students.init_weights import load_init_weights
    from cloud.students.preprocess import Normalization
    from cloud.students.training import TrainConfig, evaluate, train_supervised

    project = project_from_args(args, {"student.arch": args.arch})
    out = output_path(
        args.out, project.student.label_trained, "student.label_trained", args.replace_shipped
    )
    train = load_split(project.data, "train", args.limit)
    test = load_split(project.data, "test")
    norm = Normalization.fit(train.images)
    epochs = training_epochs(args, len(train))
    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model = create_student(project.student.arch, len(train.class_names))
    if project.student.init is not None:
        load_init_weights(model, project.student.init)
    state = out.with_name(out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        train_supervised(model, train, norm, config, state, advance)
    accuracy = evaluate(model, test, norm)
    trained = {
        "command": args.command_line,
        "seed": args.seed,
        "epochs": epochs,
        "train_images": len(train),
        "data": project.data.train,
        "init": str(project.student.init or ""),
        "clean_test_accuracy": round(accuracy, 4),
    }
    info = StudentInfo(
        project.student.arch,
        tuple(train.class_names),
        norm,
        image_size=project.data.image_size,
        trained=trained,
    )
    save_student(out, model, info)
    state.unlink(missing_ok=True)
    print(
        f"{out}: {project.student.arch}, clean test accuracy {accuracy:.2%} "
        f"({len(test)} test images)"
    )
    return 0
