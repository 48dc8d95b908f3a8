"""``cdca cloud distill``: distil the teacher into the device student and compare it with the label-trained one."""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud.cli_args import add_training_arguments, training_epochs
from cloud.project_cli import add_project_arguments, project_from_args
from protocol.config.models import StudentArch

if TYPE_CHECKING:
    import torch

    from cloud.data.labelled import LabelledImages
    from cloud.distill.student import DistilledStudent
    from cloud.students.preprocess import Normalization
    from cloud.teacher.teacher import Teacher
    from protocol.config.project import ProjectConfig

DISTILL_MIN_STEPS = 2000  # a small dataset still gets this many optimiser steps by default


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``distill`` under ``cdca cloud``."""
    distill = sub.add_parser(
        "distill",
        help="PromptKD-style distillation of the teacher into the device student (no labels)",
        description="Trains the student (student.arch) plus a projector to match the project's "
        "teacher (KL) on its training images (data.train), labels never read; class vectors "
        "come from the teacher's CoOp prompts (teacher.prompts) or its template. Writes "
        "student.checkpoint (or --out) and a report next to it: clean (data.test) and "
        "severity-5 (data.shifted) accuracy of the teacher, the label-trained student "
        "(student.label_trained) and the distilled one.",
        epilog="example: cdca cloud distill --project cdca.toml",
    )
    distill.add_argument(
        "--teacher", help="teacher.model: builtin | open_clip name | local-dir:DIR"
    )
    distill.add_argument("--pretrained", help="teacher.pretrained: open_clip tag or weights file")
    distill.add_argument("--teacher-checkpoint", type=Path, help="teacher.checkpoint (builtin)")
    distill.add_argument(
        "--prompts", type=Path, help="teacher.prompts: a CoOp file from learn-prompts"
    )
    distill.add_argument("--arch", choices=typing.get_args(StudentArch), help="student.arch")
    add_training_arguments(
        distill, epochs=8, min_steps=DISTILL_MIN_STEPS, lr=2e-3, out_key="student.checkpoint"
    )
    distill.add_argument(
        "--num-test", type=int, default=10_000, help="clean test images for the report"
    )
    distill.add_argument(
        "--num-per-domain", type=int, default=1000, help="shifted images per corruption"
    )
    add_project_arguments(distill)
    distill.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Distil, evaluate, save; prints a comparison table and writes it next to the checkpoint."""
    import torch

    from cloud.data.splits import load_split
    from cloud.distill.checkpoint import DistilledInfo, save_distilled
    from cloud.distill.student import DistilledStudent
    from cloud.distill.training import DistillConfig, distill, teacher_logits
    from cloud.progress import epoch_progress
    from cloud.shipped import output_path
    from cloud.students import create_student
    from cloud.students.init_weights import load_init_weights
    from cloud.students.preprocess import Normalization

    project = project_from_args(
        args,
        {
            "teacher.model": args.teacher,
            "teacher.pretrained": args.pretrained,
            "teacher.checkpoint": args.teacher_checkpoint,
            "teacher.prompts": args.prompts,
            "student.arch": args.arch,
        },
    )
    out = output_path(
        args.out, project.student.checkpoint, "student.checkpoint", args.replace_shipped
    )
    train = load_split(project.data, "train", args.limit)
    teacher, vectors = _teacher_and_vectors(project, tuple(train.class_names))
    targets = torch.cat(
        [
            teacher_logits(teacher, train.images, vectors),
            teacher_logits(teacher, train.images[:, :, ::-1], vectors),
        ]
    )
    torch.manual_seed(args.seed)
    encoder = create_student(project.student.arch, len(train.class_names))
    if project.student.init is not None:
        load_init_weights(encoder, project.student.init)
    student = DistilledStudent(encoder, teacher.embed_dim, float(teacher.logit_scale()))
    norm = Normalization.fit(train.images)
    config = DistillConfig(
        epochs=training_epochs(args, len(train)),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    state = out.with_name(out.name + ".state.pt")
    with epoch_progress(config.epochs, -(-len(train) // config.batch_size)) as advance:
        history = distill(student, train.images, targets, vectors, norm, config, state, advance)
    rows = _compare(args, project, teacher, student, vectors, norm)
    info = DistilledInfo(
        arch=project.student.arch,
        class_names=tuple(train.class_names),
        normalization=norm,
        embed_dim=teacher.embed_dim,
        logit_scale=float(teacher.logit_scale()),
        teacher=teacher.name,
        image_size=project.data.image_size,
        trained={
            "command": args.command_line,
            "seed": args.seed,
            "epochs": config.epochs,
            "train_images": len(train),
            "data": project.data.train,
            "prompts": str(project.teacher.prompts or "zero-shot template"),
            "final_kl": history[-1] if history else None,
            "clean_test_accuracy": rows["distilled student"]["clean"],
        },
    )
    save_distilled(out, student, vectors, info)
    state.unlink(missing_ok=True)
    _report(out, rows)
    return 0


def _teacher_and_vectors(
    project: ProjectConfig, class_names: tuple[str, ...]
) -> tuple[Teacher, torch.Tensor]:
    """The project's teacher and its class vectors (learned CoOp prompts, else the template)."""
    from cloud.coop.storage import load_prompt_vectors
    from cloud.teacher.factory import teacher_for

    teacher = teacher_for(project.teacher, class_names, project.data.image_size)
    if project.teacher.prompts is not None:
        vectors, names = load_prompt_vectors(teacher, project.teacher.prompts)
        _check_prompt_classes(project.teacher.prompts, tuple(names), class_names)
    else:
        vectors = teacher.class_vectors(class_names, project.teacher.template)
    return teacher, vectors.detach().cpu()


def _check_prompt_classes(path: Path, learned: tuple[str, ...], wanted: tuple[str, ...]) -> None:
    from protocol.errors import ConfigError

    if tuple(learned) != tuple(wanted):
        raise ConfigError(
            f"teacher.prompts {path} was learned for the classes {list(learned)}, "
            f"the project has {list(wanted)}; run `cdca cloud learn-prompts` again"
        )


Predict = Callable[[np.ndarray], np.ndarray]


def _compare(
    args: argparse.Namespace,
    project: ProjectConfig,
    teacher: Teacher,
    student: DistilledStudent,
    vectors: torch.Tensor,
    norm: Normalization,
) -> dict[str, dict[str, float]]:
    import torch

    from cloud.data.splits import load_split
    from cloud.students.preprocess import pixels_from_uint8

    @torch.no_grad()
    def batched(fn: Callable[[np.ndarray], torch.Tensor]) -> Predict:
        return lambda images: np.concatenate(
            [fn(images[i : i + 500]).argmax(1).cpu().numpy() for i in range(0, len(images), 500)]
        )

    models: dict[str, Predict] = {
        "teacher": batched(lambda im: teacher.logits(pixels_from_uint8(im), vectors)),
        **_label_trained_row(project, batched),
        "distilled student": batched(lambda im: student(norm.to_tensor(im), vectors)),
    }
    test = load_split(project.data, "test").take(args.num_test)
    return {
        name: _accuracies(predict, test, project.data.shifted, args.num_per_domain)
        for name, predict in models.items()
    }


def _label_trained_row(project: ProjectConfig, batched: Callable) -> dict[str, Predict]:
    """The project's label-trained student, when it has one for these classes."""
    from cloud.shipped import label_trained_student
    from cloud.students.checkpoint import load_student

    path = label_trained_student(project)
    if path is None or not path.is_file():
        return {}
    labelled, info = load_student(path)
    return {"label-trained student": batched(lambda im: labelled(info.normalization.to_tensor(im)))}


def _accuracies(
    predict: Predict, test: LabelledImages, shifted: str, count: int
) -> dict[str, float]:
    from cloud.data.corruptions import TEST_CORRUPTIONS
    from cloud.data.formats import open_benchmark

    result = {"clean": float((predict(test.images) == test.labels).mean())}
    if Path(shifted.partition(":")[2] or shifted).is_dir():
        bench = open_benchmark(shifted)
        present = [c for c in TEST_CORRUPTIONS if c in bench.corruptions()]
        shifted_sets = [bench.load(c, 5, min(count, bench.count(c))) for c in present]
        per = [float((predict(d.images) == d.labels).mean()) for d in shifted_sets]
        if per:
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
