"""``cdca cloud distill``: distil the teacher into the device student and compare it with the label-trained one."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud.cli_args import add_training_arguments

if TYPE_CHECKING:
    import torch

    from cloud.data.labelled import LabelledImages
    from cloud.distill.student import DistilledStudent
    from cloud.students.preprocess import Normalization
    from cloud.teacher.teacher import Teacher

DEFAULT_DISTILLED = (
    Path(__file__).resolve().parents[1] / "checkpoints" / "student_distilled.safetensors"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``distill`` under ``cdca cloud``."""
    distill = sub.add_parser(
        "distill",
        help="PromptKD-style distillation of the teacher into the device student (no labels)",
        description="Trains the student encoder plus a projector to match the teacher's logits "
        "(KL) on unlabelled Fashion-MNIST training images; class vectors come from a learned "
        "CoOp prompt (--prompts) or the zero-shot template. Reports clean and shifted accuracy "
        "next to the label-trained student and the teacher.",
    )
    distill.add_argument("--teacher", default="builtin")
    distill.add_argument("--pretrained", default=None)
    distill.add_argument(
        "--prompts", type=Path, default=None, help="CoOp prompt file from learn-prompts"
    )
    distill.add_argument("--arch", default="compact_cnn")
    add_training_arguments(distill, epochs=8, lr=2e-3, out=DEFAULT_DISTILLED)
    distill.add_argument(
        "--data", default="data/fashion-mnist-c", help="shifted benchmark for the report"
    )
    distill.add_argument(
        "--num-test", type=int, default=10_000, help="clean test images for the report"
    )
    distill.add_argument(
        "--num-per-domain", type=int, default=1000, help="shifted images per corruption"
    )
    distill.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Distil, evaluate, save; prints a comparison table and writes it next to the checkpoint."""
    import torch

    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.distill.checkpoint import DistilledInfo, save_distilled
    from cloud.distill.student import DistilledStudent
    from cloud.distill.training import DistillConfig, distill, teacher_logits
    from cloud.progress import epoch_progress
    from cloud.prompts.storage import load_prompt_vectors
    from cloud.students import create_student
    from cloud.students.preprocess import Normalization
    from cloud.teacher.factory import create_teacher

    teacher = create_teacher(args.teacher, args.pretrained)
    train = load_fashion_mnist("train", args.data_dir).take(args.limit)
    if args.prompts:
        vectors, _ = load_prompt_vectors(teacher, args.prompts)
    else:
        vectors = teacher.class_vectors(train.class_names)
    vectors = vectors.detach().cpu()
    targets = torch.cat([teacher_logits(teacher, train.images, vectors),
                         teacher_logits(teacher, train.images[:, :, ::-1], vectors)])  # fmt: skip
    torch.manual_seed(args.seed)
    student = DistilledStudent(create_student(args.arch, len(train.class_names)), teacher.embed_dim,
                               float(teacher.logit_scale()))  # fmt: skip
    norm = Normalization.fit(train.images)
    config = DistillConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    state = args.out.with_name(args.out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        history = distill(student, train.images, targets, vectors, norm, config, state, advance)
    rows = _compare(args, teacher, student, vectors, norm)
    info = DistilledInfo(
        arch=args.arch, class_names=tuple(train.class_names), normalization=norm,
        embed_dim=teacher.embed_dim, logit_scale=float(teacher.logit_scale()), teacher=teacher.name,
        trained={"command": args.command_line, "seed": args.seed, "epochs": args.epochs,
                 "train_images": len(train), "prompts": str(args.prompts or "zero-shot template"),
                 "final_kl": history[-1] if history else None,
                 "clean_test_accuracy": rows["distilled student"]["clean"]},
    )  # fmt: skip
    save_distilled(args.out, student, vectors, info)
    state.unlink(missing_ok=True)
    _report(args.out, rows)
    return 0


Predict = Callable[[np.ndarray], np.ndarray]


def _compare(
    args: argparse.Namespace,
    teacher: Teacher,
    student: DistilledStudent,
    vectors: torch.Tensor,
    norm: Normalization,
) -> dict[str, dict[str, float]]:
    import torch

    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.students.checkpoint import load_student
    from cloud.students.cli import DEFAULT_STUDENT
    from cloud.students.preprocess import pixels_from_uint8

    labelled, labelled_info = load_student(DEFAULT_STUDENT)

    def as_pixels(images: np.ndarray) -> torch.Tensor:
        return pixels_from_uint8(images)

    @torch.no_grad()
    def batched(fn: Callable[[np.ndarray], torch.Tensor]) -> Predict:
        return lambda images: np.concatenate(
            [fn(images[i : i + 500]).argmax(1).cpu().numpy() for i in range(0, len(images), 500)]
        )

    models: dict[str, Predict] = {
        "teacher": batched(lambda im: teacher.logits(as_pixels(im), vectors)),
        "label-trained student": batched(
            lambda im: labelled(labelled_info.normalization.to_tensor(im))
        ),
        "distilled student": batched(lambda im: student(norm.to_tensor(im), vectors)),
    }
    test = load_fashion_mnist("test", args.data_dir).take(args.num_test)
    return {
        name: _accuracies(predict, test, args.data, args.num_per_domain)
        for name, predict in models.items()
    }


def _accuracies(predict: Predict, test: LabelledImages, data: str, count: int) -> dict[str, float]:
    from cloud.data.corruptions import TEST_CORRUPTIONS
    from cloud.data.formats import open_benchmark

    result = {"clean": float((predict(test.images) == test.labels).mean())}
    if Path(data.partition(":")[2] or data).is_dir():
        bench = open_benchmark(data)
        shifted = [bench.load(c, 5, count) for c in TEST_CORRUPTIONS]
        per = [float((predict(d.images) == d.labels).mean()) for d in shifted]
        result["severity5_mean"] = float(np.mean(per))
    return result


def _report(out: Path, rows: dict[str, dict[str, float]]) -> None:
    lines = ["| model | clean (%) | severity-5 mean (%) |", "|---|---|---|"]
    for name, acc in rows.items():
        shifted = f"{100 * acc['severity5_mean']:.1f}" if "severity5_mean" in acc else "n/a"
        lines.append(f"| {name} | {100 * acc['clean']:.1f} | {shifted} |")
    table = "\n".join(lines)
    out.with_suffix(".report.md").write_text(table + "\n")
    out.with_suffix(".report.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.report.md')}")
