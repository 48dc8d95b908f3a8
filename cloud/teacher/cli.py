"""``cdca train teacher``: train the built-in CLIP teacher on the project's labelled images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.cli_args import add_training_arguments, training_epochs
from cloud.project_cli import add_project_arguments, project_from_args
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from cloud.data.labelled import LabelledImages
    from cloud.teacher.teacher import Teacher
    from protocol.config.project import ProjectConfig

TEACHER_MIN_STEPS = 1000  # a ViT from scratch needs this many steps even on a small dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``teacher`` under ``cdca train``."""
    teacher = sub.add_parser(
        "teacher",
        help="train the built-in CLIP teacher (a small ViT) on the project's images",
        description="CLIP-style training of both towers on the project's training images "
        "(data.train) with captions teacher.template filled with data.class_names, augmented "
        "only with AugMix ops and 4 extra corruptions (never the 15 test corruptions). Writes "
        "teacher.checkpoint (or --out); clean accuracy on data.test and, when data.shifted is "
        "prepared, severity-5 accuracy, stored with the weights. A run that diverges or sits "
        "at chance stops with what to try. Resumes from <out>.state.pt. A pretrained open_clip "
        "teacher (teacher.model) needs no training: use `cdca cloud learn-prompts`.",
        epilog="example: cdca train teacher --project cdca.toml",
    )
    add_training_arguments(
        teacher, epochs=10, min_steps=TEACHER_MIN_STEPS, lr=1e-3, out_key="teacher.checkpoint"
    )
    teacher.add_argument(
        "--eval-images", type=int, default=1000, help="shifted images per domain for the check"
    )
    teacher.add_argument("--augmix-prob", type=float, default=0.5, help="share of images AugMix-ed")
    teacher.add_argument(
        "--extra-prob", type=float, default=0.5, help="share given an extra corruption"
    )
    teacher.add_argument(
        "--init", type=Path, default=None, help="start from this teacher checkpoint (fine-tuning)"
    )
    add_project_arguments(teacher)
    teacher.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, measure clean and shifted accuracy, save fp16 weights with metadata."""
    from cloud.data.splits import load_split
    from cloud.progress import epoch_progress
    from cloud.shipped import output_path
    from cloud.teacher.factory import BUILTIN, create_teacher, save_teacher_weights
    from cloud.teacher.training import TeacherTrainConfig, evaluate_teacher, train_teacher

    project = project_from_args(args)
    _check_builtin(project)
    out = output_path(
        args.out, project.teacher.checkpoint, "teacher.checkpoint", args.replace_shipped
    )
    train = load_split(project.data, "train", args.limit)
    test = load_split(project.data, "test")
    config = TeacherTrainConfig(
        epochs=training_epochs(args, len(train)),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        augmix_prob=args.augmix_prob,
        extra_corruption_prob=args.extra_prob,
        template=project.teacher.template,
    )
    teacher = create_teacher(
        BUILTIN,
        device="cpu",
        load_weights=args.init is not None,
        checkpoint=args.init,
        image_size=project.data.image_size,
    )
    _check_init_size(args.init, teacher, project.data.image_size)
    state = out.with_name(out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        train_teacher(teacher, train, config, state, advance)
    # Measure what ships: the checkpoint is fp16, so round the weights the same way first.
    teacher.model.half().float()
    class_vectors = teacher.class_vectors(train.class_names, config.template)
    meta: dict[str, object] = {
        "command": args.command_line,
        "seed": args.seed,
        "epochs": config.epochs,
        "train_images": len(train),
        "data": project.data.train,
        "class_names": list(train.class_names),
        "template": config.template,
        "image_size": teacher.preprocess.image_size,
        "clean_test_accuracy": round(evaluate_teacher(teacher, test, class_vectors), 4),
    }
    if args.init is not None:  # the full recipe is the earlier run plus this one
        from cloud.weights_io import read_metadata

        earlier = read_metadata(args.init, kind="teacher checkpoint", make_it="cdca train teacher")
        meta["fine_tuned_from"] = {k: v for k, v in earlier.items() if k != "severity5_accuracy"}
    meta.update(_shifted_accuracy(teacher, class_vectors, project.data.shifted, args.eval_images))
    save_teacher_weights(teacher.model, out, meta)
    state.unlink(missing_ok=True)
    shown = ("clean_test_accuracy", "severity5_mean_accuracy")
    print(f"{out}: " + ", ".join(f"{k}={meta[k]}" for k in shown if k in meta))
    return 0


def _check_builtin(project: ProjectConfig) -> None:
    if not project.teacher.is_builtin:
        raise ConfigError(
            f"teacher.model is {project.teacher.model!r}, an open_clip model: it is used as it "
            "is (zero-shot on data.class_names), not trained here. Learn CoOp prompts for it "
            'with `cdca cloud learn-prompts`, or set teacher.model = "builtin" to train cdca\'s'
        )


def _check_init_size(init: Path | None, teacher: Teacher, image_size: int) -> None:
    """A checkpoint trained at another image size would see the project's images resized."""
    if init is not None and teacher.preprocess.image_size != image_size:
        raise ConfigError(
            f"--init {init} was trained on {teacher.preprocess.image_size}-px images, the project "
            f"has data.image_size = {image_size}; train from scratch (leave --init out)"
        )


def _shifted_accuracy(
    teacher: Teacher, class_vectors: torch.Tensor, shifted: str, count: int
) -> dict[str, object]:
    from cloud.teacher.training import evaluate_teacher

    return severity5_accuracy(
        lambda data: evaluate_teacher(teacher, data, class_vectors), shifted, count
    )


def severity5_accuracy(
    accuracy: Callable[[LabelledImages], float], shifted: str, count: int
) -> dict[str, object]:
    """Mean and per-corruption ``accuracy`` at severity 5; {} when ``shifted`` is not prepared."""
    from cloud.data.corruptions import TEST_CORRUPTIONS
    from cloud.data.formats import open_benchmark

    if not Path(shifted.partition(":")[2] or shifted).is_dir():
        return {}
    dataset = open_benchmark(shifted)
    present = [c for c in TEST_CORRUPTIONS if c in dataset.corruptions()]
    per_domain = {c: accuracy(dataset.load(c, 5, min(count, dataset.count(c)))) for c in present}
    if not per_domain:
        return {}
    return {
        "severity5_mean_accuracy": round(sum(per_domain.values()) / len(per_domain), 4),
        "severity5_accuracy": {k: round(v, 4) for k, v in per_domain.items()},
    }
