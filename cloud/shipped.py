"""The checkpoints shipped with cdca (the built-in Fashion-MNIST project) and the rule that guards them.

A project names its own checkpoints (``teacher.checkpoint``, ``student.checkpoint``,
``student.label_trained``); left empty they mean the shipped files, which know only
Fashion-MNIST's classes. Training commands write to the project's files, never over a
shipped one unless the user passes ``--replace-shipped``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from protocol.config.models import TeacherConfig
from protocol.config.project import ProjectConfig
from protocol.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED_TEACHER = SHIPPED_DIR / "teacher_builtin.safetensors"
SHIPPED_STUDENT = SHIPPED_DIR / "student_compact_cnn.safetensors"  # label-trained
SHIPPED_DISTILLED = SHIPPED_DIR / "student_distilled.safetensors"


def distilled_student(project: ProjectConfig) -> Path:
    """The distilled student the project's devices run."""
    return project.student.checkpoint or SHIPPED_DISTILLED


def label_trained_student(project: ProjectConfig) -> Path | None:
    """The label-trained reference student, if the project has one (the shipped one only for Fashion-MNIST)."""
    if project.student.label_trained is not None:
        return project.student.label_trained
    return SHIPPED_STUDENT if project.is_builtin_project else None


def builtin_teacher(config: TeacherConfig) -> Path | None:
    """The built-in teacher's weights (the shipped ones unless named); None for open_clip."""
    return (config.checkpoint or SHIPPED_TEACHER) if config.is_builtin else None


def with_shipped_checkpoints(project: ProjectConfig) -> ProjectConfig:
    """The project with each checkpoint it leaves to the shipped files named by absolute path.

    A copy of the code without the shipped files (Flower's app bundle, which carries no
    weights) then still finds them. Projects on their own data are returned as they are.
    """
    if not project.is_builtin_project:
        return project
    student = replace(
        project.student,
        checkpoint=distilled_student(project),
        label_trained=label_trained_student(project),
    )
    teacher = project.teacher
    if teacher.is_builtin:
        teacher = replace(teacher, checkpoint=builtin_teacher(teacher))
    return replace(project, student=student, teacher=teacher)


def is_shipped(path: Path) -> bool:
    """Whether ``path`` is inside the shipped checkpoints folder."""
    return path.resolve().parent == SHIPPED_DIR


def output_path(
    explicit: Path | None, configured: Path | None, key: str, replace_shipped: bool = False
) -> Path:
    """Where a training command writes: ``--out``, else the project's ``key``; never a shipped file by accident."""
    path = explicit or configured
    if path is None:
        raise ConfigError(
            f"no place to write to: {key} is empty (the built-in project runs the checkpoint "
            f"shipped with cdca). Set {key} in the project file (`cdca init` writes one) or "
            "pass --out FILE"
        )
    if is_shipped(path) and not replace_shipped:
        raise ConfigError(
            f"{path} is a checkpoint shipped with cdca, which the built-in project runs. Write "
            f"somewhere else (--out FILE, or {key} in the project file), or pass "
            "--replace-shipped to replace it"
        )
    return path
