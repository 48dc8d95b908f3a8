"""``cdca train teacher``: train the built-in CLIP teacher on clean Fashion-MNIST image-text pairs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.cli_args import add_training_arguments
from cloud.teacher.factory import BUILTIN_CHECKPOINT

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from cloud.data.labelled import LabelledImages
    from cloud.teacher.teacher import Teacher


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``teacher`` under ``cdca train``."""
    teacher = sub.add_parser(
        "teacher",
        help="train the built-in open_clip teacher (small ViT for 32-px images)",
        description="CLIP-style training of both towers on clean Fashion-MNIST with captions "
        "'a photo of a {class}.', augmented only with AugMix ops and the 4 extra corruptions "
        "(never the 15 test corruptions). Resumes from <out>.state.pt. When --eval-data holds a "
        "prepared benchmark, the severity-5 accuracy is measured and stored with the weights.",
    )
    add_training_arguments(teacher, epochs=10, lr=1e-3, out=BUILTIN_CHECKPOINT)
    teacher.add_argument(
        "--eval-data", default="data/fashion-mnist-c", help="benchmark for the severity-5 check"
    )
    teacher.add_argument(
        "--eval-images", type=int, default=1000, help="images per domain for that check"
    )
    teacher.add_argument("--augmix-prob", type=float, default=0.5, help="share of images AugMix-ed")
    teacher.add_argument(
        "--extra-prob", type=float, default=0.5, help="share given an extra corruption"
    )
    teacher.add_argument(
        "--init", type=Path, default=None, help="start from this teacher checkpoint (fine-tuning)"
    )
    teacher.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, measure clean and shifted accuracy, save fp16 weights with metadata."""
    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.progress import epoch_progress
    from cloud.teacher.factory import BUILTIN, create_teacher, save_teacher_weights
    from cloud.teacher.training import TeacherTrainConfig, evaluate_teacher, train_teacher

    train = load_fashion_mnist("train", args.data_dir).take(args.limit)
    test = load_fashion_mnist("test", args.data_dir)
    config = TeacherTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        augmix_prob=args.augmix_prob, extra_corruption_prob=args.extra_prob,
    )  # fmt: skip
    teacher = create_teacher(
        BUILTIN, device="cpu", load_weights=args.init is not None, checkpoint=args.init
    )
    state = args.out.with_name(args.out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        train_teacher(teacher, train, config, state, advance)
    # Measure what ships: the checkpoint is fp16, so round the weights the same way first.
    teacher.model.half().float()
    class_vectors = teacher.class_vectors(train.class_names, config.template)
    meta: dict[str, object] = {
        "command": args.command_line,
        "seed": args.seed,
        "epochs": args.epochs,
        "train_images": len(train),
        "class_names": list(train.class_names),
        "template": config.template,
        "clean_test_accuracy": round(evaluate_teacher(teacher, test, class_vectors), 4),
    }
    if args.init is not None:  # the full recipe is the earlier run plus this one
        from cloud.weights_io import read_weights

        _, earlier = read_weights(
            args.init, kind="teacher checkpoint", make_it="cdca train teacher"
        )
        meta["fine_tuned_from"] = {k: v for k, v in earlier.items() if k != "severity5_accuracy"}
    meta.update(_shifted_accuracy(teacher, class_vectors, args.eval_data, args.eval_images))
    save_teacher_weights(teacher.model, args.out, meta)
    state.unlink(missing_ok=True)
    shown = ("clean_test_accuracy", "severity5_mean_accuracy")
    print(f"{args.out}: " + ", ".join(f"{k}={meta[k]}" for k in shown if k in meta))
    return 0


def _shifted_accuracy(
    teacher: Teacher, class_vectors: torch.Tensor, eval_data: str, count: int
) -> dict[str, object]:
    from cloud.teacher.training import evaluate_teacher

    return severity5_accuracy(
        lambda data: evaluate_teacher(teacher, data, class_vectors), eval_data, count
    )


def severity5_accuracy(
    accuracy: Callable[[LabelledImages], float], eval_data: str, count: int
) -> dict[str, object]:
    """Mean and per-corruption ``accuracy`` at severity 5; {} when ``eval_data`` is not prepared."""
    from cloud.data.corruptions import TEST_CORRUPTIONS
    from cloud.data.formats import open_benchmark

    if not Path(eval_data.partition(":")[2] or eval_data).is_dir():
        return {}
    dataset = open_benchmark(eval_data)
    per_domain = {c: accuracy(dataset.load(c, 5, count)) for c in TEST_CORRUPTIONS}
    return {
        "severity5_mean_accuracy": round(sum(per_domain.values()) / len(per_domain), 4),
        "severity5_accuracy": {k: round(v, 4) for k, v in per_domain.items()},
    }
